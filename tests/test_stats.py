import math

import numpy as np
import pytest

from fedrs.errors import InputError
from fedrs.stats import format_mean_sd, mean_sd, paired_interval


def test_mean_and_sample_standard_deviation():
    assert mean_sd([0.8, 0.9, 1.0]) == pytest.approx((0.9, 0.1))
    assert mean_sd([0.7]) == (0.7, 0.0)
    assert format_mean_sd([0.8, 0.9, 1.0]) == "0.900 ± 0.100"
    with pytest.raises(InputError):
        mean_sd([])


def test_the_paired_interval_is_the_t_interval_of_the_differences_on_common_seeds():
    a = {1: 0.80, 2: 0.85, 3: 0.83, 4: 0.90, 5: 0.82, 99: 0.1}  # seed 99 has no partner: left out
    b = {1: 0.78, 2: 0.80, 3: 0.82, 4: 0.85, 5: 0.79}
    got = paired_interval(a, b)
    diffs = np.array([0.02, 0.05, 0.01, 0.05, 0.03])
    half = 2.776445105 * diffs.std(ddof=1) / math.sqrt(5)  # t(0.975, 4 df)
    assert got.n == 5 and got.mean == pytest.approx(diffs.mean())
    assert (got.low, got.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half), abs=1e-9)
    assert got.verdict == "better than" and got.low > 0
    assert got.describe("feddiff", "fedavg").startswith("feddiff is better than fedavg (+3.2 points, 95% interval")


def test_an_interval_containing_zero_is_level_and_one_seed_is_no_claim():
    a, b = {1: 0.82, 2: 0.86, 3: 0.80}, {1: 0.83, 2: 0.82, 3: 0.81}
    got = paired_interval(a, b)
    assert got.low < 0 < got.high and got.verdict == "level with"
    assert paired_interval(b, a).verdict == "level with"
    worse = paired_interval({1: 0.5, 2: 0.52, 3: 0.49}, {1: 0.8, 2: 0.81, 3: 0.79})
    assert worse.verdict == "worse than"
    single = paired_interval({1: 0.9}, {1: 0.8})
    assert single.verdict.startswith("not measured") and "no interval" in single.describe("a", "b")
    with pytest.raises(InputError, match="no seed in common"):
        paired_interval({1: 0.9}, {2: 0.8})
