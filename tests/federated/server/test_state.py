"""The seeded subset of test pixels a run scores after each round."""

import numpy as np

from fedrs.federated.server.state import eval_subset


def test_the_scored_subset_is_seeded_sorted_and_keeps_every_per_pixel_array_aligned():
    n = 50
    test = {"labels": np.arange(n), "hsi": np.arange(n * 2).reshape(n, 2), "num_classes": 5, "names": ["a"] * 3}
    a, b, c = eval_subset(test, 20, 1), eval_subset(test, 20, 1), eval_subset(test, 20, 2)
    assert np.array_equal(a["labels"], b["labels"]) and not np.array_equal(a["labels"], c["labels"])
    assert len(a["labels"]) == 20 and np.all(np.diff(a["labels"]) > 0)
    assert np.array_equal(a["hsi"][:, 0], a["labels"] * 2) and a["num_classes"] == 5 and a["names"] == ["a"] * 3
    assert eval_subset(test, None, 1) is test and eval_subset(test, 500, 1) is test
