"""Metrics and thresholds against scikit-learn and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.filters import threshold_otsu
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score

from amf import metrics


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.2).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.3 * labels, 0.15), 0, 1)
    return labels, scores


def test_binary_metrics_match_scikit_learn(scored):
    labels, scores = scored
    result = metrics.binary_metrics(labels, scores, threshold=0.45)
    predicted = scores >= 0.45
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert result["sensitivity"] == pytest.approx(recall_score(labels, predicted))
    assert result["specificity"] == pytest.approx(recall_score(labels, predicted, pos_label=0))
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert result["tp"] + result["fn"] == labels.sum() and result["n"] == 300


def test_per_sample_thresholds_pool_domains(scored):
    labels, scores = scored
    thresholds = np.where(np.arange(300) < 150, 0.4, 0.5)
    result = metrics.binary_metrics(labels, scores, threshold=thresholds)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, scores >= thresholds))
    assert math.isnan(result["threshold"])


def test_otsu_matches_scikit_image(scored):
    _, scores = scored
    assert metrics.otsu_threshold(scores) == threshold_otsu(scores)
    assert metrics.otsu_threshold(np.full(5, 0.3)) == 0.3


def test_youden_maximises_balanced_accuracy(scored):
    labels, scores = scored
    chosen = metrics.youden_threshold(labels, scores)
    best = max(balanced_accuracy_score(labels, scores >= t) for t in np.unique(scores))
    assert balanced_accuracy_score(labels, scores >= chosen) == pytest.approx(best)


def test_one_class_gives_nan_with_a_warning():
    with pytest.warns(metrics.UndefinedMetricWarning):
        result = metrics.binary_metrics(np.zeros(4), np.linspace(0, 1, 4), threshold=0.5)
    assert math.isnan(result["roc_auc"]) and math.isnan(result["sensitivity"])
    assert result["specificity"] == 0.5
    assert metrics.json_safe({"a": [result["roc_auc"], 1.0]}) == {"a": [None, 1.0]}


def test_choose_threshold_and_input_errors(scored):
    labels, scores = scored
    assert metrics.choose_threshold("otsu", labels, scores) == metrics.otsu_threshold(scores)
    assert metrics.choose_threshold("0.3", labels, scores) == 0.3
    with pytest.raises(ValueError, match="must be one of"):
        metrics.choose_threshold("median", labels, scores)
    with pytest.raises(ValueError, match="differ in length"):
        metrics.auroc(labels[:3], scores)
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.auroc(labels + 1, scores)
