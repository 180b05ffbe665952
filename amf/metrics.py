"""Binary metrics and decision thresholds, as pure functions over labels and P(atypical).

Atypical (1) is the positive class; a score >= threshold is called atypical, as the container
does. An undefined metric (one class only) is NaN with an `UndefinedMetricWarning`, never 0 or 0.5.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from skimage.filters import threshold_otsu
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

THRESHOLD_METHODS = ("youden", "otsu")


class UndefinedMetricWarning(UserWarning):
    """A metric needs both classes and got one."""


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, *, threshold: float | np.ndarray
) -> dict[str, float]:
    """AUROC, balanced accuracy, sensitivity (AMF accuracy), specificity (NMF accuracy), accuracy.

    Args:
        labels: (N,) 0 normal / 1 atypical.
        scores: (N,) P(atypical).
        threshold: scores >= threshold are called atypical; one value, or one per sample (pooling
            domains that each chose their own threshold; reported as NaN then).
    """
    labels, scores = _check(labels, scores)
    predicted = (scores >= threshold).astype(int)
    threshold = float(threshold) if np.ndim(threshold) == 0 else float("nan")
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    sensitivity = _ratio(tp, tp + fn, "sensitivity")
    specificity = _ratio(tn, tn + fp, "specificity")
    return {
        "n": int(labels.size),
        "n_atypical": int(labels.sum()),
        "threshold": float(threshold),
        "roc_auc": auroc(labels, scores),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "accuracy": (tp + tn) / labels.size if labels.size else float("nan"),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ROC AUC, NaN (with a warning) when only one class is present."""
    labels, scores = _check(labels, scores)
    if np.unique(labels).size < 2:
        warnings.warn("ROC AUC needs both classes; returning NaN", UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    return float(roc_auc_score(labels, scores))


def otsu_threshold(scores: np.ndarray) -> float:
    """Otsu's threshold on the score histogram (label-free, as the paper chooses it)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0 or np.ptp(scores) == 0:
        return float(scores[0]) if scores.size else 0.5
    return float(threshold_otsu(scores))


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity (= balanced accuracy) on labelled scores."""
    labels, scores = _check(labels, scores)
    if np.unique(labels).size < 2:
        warnings.warn(
            "Youden's threshold needs both classes; using 0.5", UndefinedMetricWarning, stacklevel=2
        )
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def choose_threshold(method: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """Dispatch on a method name from THRESHOLD_METHODS, or a fixed number given as text."""
    if method == "youden":
        return youden_threshold(labels, scores)
    if method == "otsu":
        return otsu_threshold(scores)
    try:
        value = float(method)
    except ValueError:
        raise ValueError(
            f"threshold method must be one of {THRESHOLD_METHODS} or a number, got {method!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a fixed threshold must be in [0, 1], got {value}")
    return value


def json_safe(value: Any) -> Any:
    """Undefined metrics (NaN) -> None, recursively: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(labels)}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    return labels, scores


def _ratio(numerator: int, denominator: int, name: str) -> float:
    if denominator == 0:
        warnings.warn(
            f"{name} undefined: no samples of that class; NaN", UndefinedMetricWarning, stacklevel=3
        )
        return float("nan")
    return numerator / denominator
