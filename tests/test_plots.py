"""The figures: what each panel plots, read back from the axes (not pixels)."""

import matplotlib.pyplot as plt
import numpy as np

from fedrs.plots import (
    class_colours,
    classification_map_figure,
    confusion_figure,
    cumulative_mb_sent,
    curves_figure,
    rgb_bands,
    row_normalised,
    split_figure,
)


def test_helpers_by_hand():
    np.testing.assert_allclose(row_normalised([[3, 1], [0, 0]]), [[0.75, 0.25], [0.0, 0.0]])
    np.testing.assert_allclose(cumulative_mb_sent([{"bytes_up": 1e6, "bytes_down": 1e6}, {"bytes_up": 2e6}]), [2, 4])
    assert rgb_bands([400.0, 460.0, 550.0, 640.0, 700.0], 5) == [3, 2, 1] and rgb_bands(None, 100) == [75, 50, 25]
    assert class_colours(3)(0) == (0, 0, 0, 1) and class_colours(3).N == 4


def test_the_confusion_matrix_is_row_normalised_and_titled_with_the_scores():
    report = {"algorithm": "fedavg", "oa": 0.75, "aa": 0.5, "kappa": 0.4, "confusion": [[3, 1], [0, 0]]}
    fig = confusion_figure(report, ["water", "road"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0.0, 0.0]])
    assert "OA 0.7500" in ax.get_title() and [t.get_text() for t in ax.texts] == ["3", "1"]
    plt.close(fig)


def test_the_map_shows_prediction_beside_the_ground_truth_and_curves_show_every_round():
    scene = {"class_names": ["a", "b"], "train_labels": np.array([[1, 0]]), "test_labels": np.array([[0, 2]])}
    fig = classification_map_figure(np.array([[1, 1]]), scene, "fedavg")
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), [[1, 2]])
    assert fig.axes[0].get_title() == "fedavg: prediction"
    plt.close(fig)
    rounds = [{"round": i, "train_loss": 1.0 / i, "val_oa": 0.1 * i, "val_aa": 0.1 * i, "bytes_up": 1e6}
              for i in (1, 2, 3)]
    fig = curves_figure({"algorithm": "fedavg", "rounds": rounds})
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(fig.axes[2].lines[0].get_xdata(), [1.0, 2.0, 3.0])
    plt.close(fig)


def test_the_split_figure_shows_each_split_with_its_pixel_count_and_how_it_was_carved():
    train = np.zeros((6, 6), dtype=np.int16)
    train[0, :3] = 1
    validation = np.zeros_like(train)
    validation[3, 3] = 2
    test = np.zeros_like(train)
    test[5, :] = 1
    split = {"train_labels": train, "validation_labels": validation, "test_labels": test,
             "validation_fraction": 0.2, "cv_fold": 3, "seed": 9}
    fig = split_figure(split, ["water", "road"], "tiny")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["train (3 px)", "validation (1 px)", "test (6 px)"]
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), validation)
    assert "blob fold 3" in fig._suptitle.get_text() and "seed 9" in fig._suptitle.get_text()
    plt.close(fig)
