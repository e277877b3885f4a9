"""AnomalySegmentationLoss: CE on inliers, anomaly CE on pasted pixels, optional DenseHybrid energy term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flow_anomaly_ros.segmentation.losses import AnomalySegmentationLoss


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 20, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 19, (2, 8, 8), generator=g)
    target[:, :2] = 255
    target[0, 4:6, 4:6] = 19
    return logits, target


def test_terms_match_their_definitions():
    logits, target = _batch()
    logits = logits.detach()
    total, parts = AnomalySegmentationLoss(inlier_weight=1.0, anomaly_weight=2.0)(logits, target)
    inl = (target != 255) & (target != 19)
    ce = F.cross_entropy(logits, torch.where(inl, target, 255), ignore_index=255)
    anom = -F.log_softmax(logits, 1)[:, 19][target == 19].mean()
    assert parts["inlier_ce"] == pytest.approx(float(ce), rel=1e-5)
    assert parts["anomaly_ce"] == pytest.approx(float(anom), rel=1e-5)
    assert float(total) == pytest.approx(float(ce + 2 * anom), rel=1e-5)
    assert parts["anomaly_pixels"] == 4


def test_ignore_pixels_do_not_contribute():
    logits, target = _batch()
    total, _ = AnomalySegmentationLoss()(logits, target)
    total.backward()
    assert torch.all(logits.grad[:, :, :2] == 0)
    assert torch.any(logits.grad[:, :, 4:] != 0)


def test_lowering_the_anomaly_logit_on_pasted_pixels_raises_the_loss():
    logits, target = _batch()
    fn = AnomalySegmentationLoss()
    base, _ = fn(logits.detach(), target)
    worse = logits.detach().clone()
    worse[:, 19] -= 5
    assert float(fn(worse, target)[0]) > float(base)


def test_energy_term_prefers_low_inlier_density_on_anomalies_and_is_bounded():
    logits, target = _batch()
    fn = AnomalySegmentationLoss(anomaly_weight=0.0, inlier_weight=0.0, energy_weight=1.0)
    z = logits.detach().clone()
    z_good = z.clone()
    z_good[:, :19] -= 20.0 * (target == 19).unsqueeze(1)  # low inlier LSE on anomalies
    good, parts = fn(z_good, target)
    bad, _ = fn(z, target)
    assert float(good) < float(bad)
    assert float(good) >= 0.0 and parts["energy"] == pytest.approx(float(good))


def test_batches_without_anomalies_still_give_a_gradient_graph():
    logits, target = _batch()
    target[target == 19] = 3
    total, parts = AnomalySegmentationLoss(energy_weight=0.03)(logits, target)
    assert parts["anomaly_ce"] == 0.0 and parts["energy"] == 0.0
    total.backward()
    assert logits.grad is not None


def test_bad_inputs_are_rejected():
    logits, target = _batch()
    with pytest.raises(ValueError, match="do not match"):
        AnomalySegmentationLoss()(logits, target[:, :4])
    with pytest.raises(ValueError, match="outside"):
        AnomalySegmentationLoss()(logits, torch.full_like(target, 40))
    with pytest.raises(ValueError, match="anomaly last"):
        AnomalySegmentationLoss()(logits[:, :19], target)
    with pytest.raises(ValueError, match="energy_weight"):
        AnomalySegmentationLoss(energy_weight=-1)
