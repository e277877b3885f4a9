"""Pixel metrics: AP, FPR95, AUROC (ignore label respected) against scikit-learn; mIoU with anomaly predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from flow_anomaly_ros.evaluation.pixel_metrics import AnomalyPixelAccumulator, ConfusionMatrix, anomaly_metrics


def _data(seed=0, n=5000, ties=False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.uint8)
    scores = rng.normal(size=n) + 1.5 * labels
    if ties:
        scores = np.round(scores, 1)
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
def test_matches_scikit_learn(ties):
    scores, labels = _data(ties=ties)
    m = anomaly_metrics(scores, labels)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-9)


def test_ignore_label_is_left_out():
    scores, labels = _data()
    labels_ign = labels.copy()
    labels_ign[:1000] = 255
    scores_mod = scores.copy()
    scores_mod[:1000] = 1e6  # would ruin every metric if counted
    assert anomaly_metrics(scores_mod, labels_ign) == anomaly_metrics(scores[1000:], labels[1000:])


def test_perfect_and_inverted_scores():
    labels = np.array([0, 0, 1, 1, 0], np.uint8)
    perfect = anomaly_metrics(labels.astype(float), labels)
    assert perfect["ap"] == 1.0 and perfect["auroc"] == 1.0 and perfect["fpr95"] == 0.0
    inverted = anomaly_metrics(-labels.astype(float), labels)
    assert inverted["auroc"] == 0.0 and inverted["fpr95"] == 1.0


def test_accumulator_over_images_equals_the_pooled_computation():
    scores, labels = _data(n=4096)
    acc = AnomalyPixelAccumulator()
    for s, y in zip(scores.reshape(4, 32, 32), labels.reshape(4, 32, 32)):
        acc.update(s, y)
    assert acc.compute() == pytest.approx(anomaly_metrics(scores, labels))
    sub = AnomalyPixelAccumulator(max_pixels_per_image=500, seed=1)
    for s, y in zip(scores.reshape(4, 32, 32), labels.reshape(4, 32, 32)):
        sub.update(s, y)
    assert sub.compute()["pixels"] == 2000


def test_metric_errors_are_clear():
    with pytest.raises(ValueError, match="both anomaly and inlier"):
        anomaly_metrics(np.zeros(4), np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="must be 0, 1"):
        anomaly_metrics(np.zeros(4), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="NaN"):
        anomaly_metrics(np.array([0, np.nan, 1, 0]), np.array([0, 1, 1, 0]))


def test_miou_counts_anomaly_predictions_on_inliers_as_misses():
    cm = ConfusionMatrix(3)
    target = np.array([0, 0, 1, 1, 2, 255])
    cm.update(np.array([0, 0, 1, 1, 2, 0]), target)
    assert cm.miou() == 1.0
    cm2 = ConfusionMatrix(3)
    cm2.update(np.array([0, 19, 1, 1, 2, 0]), target)  # one road pixel called anomaly
    np.testing.assert_allclose(cm2.iou(), [0.5, 1.0, 1.0])
    assert cm2.miou() == pytest.approx(2.5 / 3)
