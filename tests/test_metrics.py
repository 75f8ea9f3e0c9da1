import numpy as np
import pytest

from fedrs.metrics import (
    average_accuracy,
    classification_report,
    cohen_kappa,
    confusion_matrix,
    overall_accuracy,
    per_class_accuracy,
)

Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0, 1])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 1, 3]])


def test_scores_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert overall_accuracy(cm) == pytest.approx(0.7)
    np.testing.assert_allclose(per_class_accuracy(cm), [2 / 3, 1.0, 0.6])
    assert average_accuracy(cm) == pytest.approx((2 / 3 + 1.0 + 0.6) / 3)
    # p_o = 0.7; p_e = (3·3 + 2·4 + 5·3) / 100 = 0.32
    assert cohen_kappa(cm) == pytest.approx((0.7 - 0.32) / (1 - 0.32))


def test_absent_class_is_not_scored():
    cm = confusion_matrix([0, 0, 1], [0, 1, 1], 3)
    acc = per_class_accuracy(cm)
    assert np.isnan(acc[2])
    assert average_accuracy(cm) == pytest.approx((0.5 + 1.0) / 2)


def test_perfect_and_chance():
    y = np.arange(4).repeat(5)
    assert cohen_kappa(confusion_matrix(y, y, 4)) == pytest.approx(1.0)
    assert cohen_kappa(confusion_matrix(y, np.zeros_like(y), 4)) == pytest.approx(0.0)


def test_report_is_json_ready_with_names():
    report = classification_report(Y_TRUE, Y_PRED, 3, ["a", "b", "c"])
    assert report["per_class"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": pytest.approx(0.6)}
    assert report["per_class_spread"] == pytest.approx(0.4)
    assert report["num_samples"] == 10
    assert isinstance(report["confusion"], list)


def test_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="expected class indices 0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="2 labels but y_pred has 3"):
        confusion_matrix([0, 1], [0, 1, 1], 3)


def test_expected_calibration_error_by_hand():
    from fedrs.metrics import confidence_bin_sums, expected_calibration_error

    # four pixels in two bins (of 10): 0.95 and 1.0 (right, right) in the last; 0.25 and 0.3 (right, wrong)
    confidence = np.array([0.95, 1.0, 0.25, 0.3])
    correct = np.array([1, 1, 1, 0])
    bins = confidence_bin_sums(confidence, correct, bins=10)
    assert bins[:, 9].tolist() == [2, 1.95, 2] and bins[:, 2].tolist() == [1, 0.25, 1]
    assert bins[:, 3].tolist() == [1, 0.3, 0]
    # |2 − 1.95| + |1 − 0.25| + |0 − 0.3| over four pixels
    assert expected_calibration_error(bins) == pytest.approx((0.05 + 0.75 + 0.3) / 4)
    # additive: two halves give the whole
    halves = confidence_bin_sums(confidence[:2], correct[:2], 10) + confidence_bin_sums(confidence[2:], correct[2:], 10)
    np.testing.assert_allclose(halves, bins)
    assert np.isnan(expected_calibration_error(np.zeros((3, 10))))
    with pytest.raises(ValueError, match="expected probabilities"):
        confidence_bin_sums(np.array([1.2]), np.array([1]))
