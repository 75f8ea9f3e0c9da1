"""Classification metrics of the remote-sensing literature: the one implementation in fedrs.

Labels here are 0-based class indices (0..K-1); the scene's "0 = unlabelled" convention never
reaches this module (patch sets store ``label - 1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CONFUSION = "confusion"  # the name confusion counts go by (in reports, and on their way from a client)
CROSS_ENTROPY = "cross_entropy_sum"  # a client's summed cross-entropy of the pixels it scored (validation)
# the same sum with the logits divided by each temperature of a grid (temperature scaling's fit)
CROSS_ENTROPY_BY_TEMPERATURE = "cross_entropy_by_temperature"
CONFIDENCE_BINS = 15  # equal-width bins of the top-class probability (Guo et al., 2017)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of pixels of true class ``i`` predicted as ``j``."""
    y_true = np.asarray(y_true).ravel().astype(np.int64)
    y_pred = np.asarray(y_pred).ravel().astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} holds values {arr.min()}..{arr.max()}; expected class indices 0..{num_classes - 1}"
            )
    flat = y_true * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class; NaN for a class with no test pixel (it cannot be scored)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / support, np.nan)


def overall_accuracy(confusion: np.ndarray) -> float:
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def average_accuracy(confusion: np.ndarray) -> float:
    """Mean of the per-class accuracies over the classes present in the test set."""
    acc = per_class_accuracy(confusion)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def cohen_kappa(confusion: np.ndarray) -> float:
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    if not total:
        return float("nan")
    p_observed = np.trace(confusion) / total
    p_expected = float((confusion.sum(axis=0) * confusion.sum(axis=1)).sum()) / total**2
    if p_expected == 1.0:
        return 1.0 if p_observed == 1.0 else 0.0
    return float((p_observed - p_expected) / (1.0 - p_expected))


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, class_names: list[str] | None = None
) -> dict[str, Any]:
    """OA, AA, κ, per-class accuracy (with names), spread and the confusion matrix in one dict.

    The values are plain Python types so the dict can go straight to JSON and MLflow.
    """
    return confusion_report(confusion_matrix(y_true, y_pred, num_classes), class_names)


def confusion_report(cm: np.ndarray, class_names: list[str] | None = None) -> dict[str, Any]:
    """The scores of ``classification_report`` from counts alone (what federated validation sums)."""
    cm = np.asarray(cm).astype(np.int64)
    acc = per_class_accuracy(cm)
    names = list(class_names) if class_names is not None else [str(i + 1) for i in range(len(cm))]
    finite = acc[np.isfinite(acc)]
    return {
        "oa": overall_accuracy(cm),
        "aa": average_accuracy(cm),
        "kappa": cohen_kappa(cm),
        "per_class": {name: (None if np.isnan(a) else float(a)) for name, a in zip(names, acc, strict=False)},
        "per_class_spread": float(finite.max() - finite.min()) if finite.size else float("nan"),
        CONFUSION: cm.tolist(),
        "num_samples": int(cm.sum()),
    }


def confidence_bin_sums(confidence: np.ndarray, correct: np.ndarray, bins: int = CONFIDENCE_BINS) -> np.ndarray:
    """Per equal-width bin of the top-class probability: the pixel count, the summed confidence and
    the number predicted correctly (rows 0, 1, 2) — additive, so batches and clients add them. A
    pixel without a finite confidence (a diverged model) falls in no bin."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence has {confidence.size} values but correct has {correct.size}")
    finite = np.isfinite(confidence)  # a diverged model's NaN scores: binned nowhere (its ECE: NaN if all are)
    confidence, correct = confidence[finite], correct[finite]
    if confidence.size and (confidence.min() < 0 or confidence.max() > 1):
        raise ValueError(f"confidence holds values {confidence.min()}..{confidence.max()}; expected probabilities")
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # 1.0 falls in the last bin
    return np.stack([np.bincount(index, minlength=bins).astype(np.float64),
                     np.bincount(index, weights=confidence, minlength=bins),
                     np.bincount(index, weights=correct, minlength=bins)])


def expected_calibration_error(bin_sums: np.ndarray) -> float:
    """ECE: the pixel-weighted mean over bins of |accuracy − mean confidence| (``confidence_bin_sums``);
    0 for a model whose p-confident predictions are right a fraction p of the time."""
    count, confidence, correct = np.asarray(bin_sums, dtype=np.float64)
    total = count.sum()
    return float(np.abs(correct - confidence).sum() / total) if total else float("nan")
