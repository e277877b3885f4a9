"""score_map: the anomaly-class probability and the max-softmax / max-logit / energy / DenseHybrid baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow_anomaly_ros.segmentation.scores import SCORE_METHODS, score_map


def _logits() -> np.ndarray:
    """Pixel 0: confident road. Pixel 1: flat over inliers. Pixel 2: anomaly channel dominates."""
    z = np.zeros((1, 20, 1, 3), np.float32)
    z[0, 0, 0, 0] = 10.0
    z[0, 19, 0, 0] = -5.0
    z[0, :19, 0, 1] = 0.1
    z[0, 19, 0, 2] = 12.0
    return z


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_confident_inlier_scores_lower_than_uncertain_and_anomalous_pixels(method):
    s = score_map(_logits(), method)
    assert s.shape == (1, 1, 3) and s.dtype == np.float32
    assert s[0, 0, 0] < s[0, 0, 1]
    if method in ("anomaly_prob", "densehybrid"):
        assert s[0, 0, 2] > s[0, 0, 1]


def test_anomaly_prob_is_the_softmax_of_the_last_channel():
    z = _logits()
    e = np.exp(z - z.max(1, keepdims=True))
    expected = (e[:, 19] / e.sum(1)).astype(np.float32)
    np.testing.assert_allclose(score_map(z, "anomaly_prob"), expected, rtol=1e-6)
    assert score_map(z, "anomaly_prob")[0, 0, 2] > 0.99


def test_baselines_ignore_the_anomaly_channel():
    z = _logits()
    z2 = z.copy()
    z2[:, 19] += 50.0
    for method in ("max_softmax", "max_logit", "energy"):
        np.testing.assert_allclose(score_map(z, method), score_map(z2, method))
    np.testing.assert_allclose(score_map(z, "max_logit")[0, 0, 0], -10.0)
    inl = z[:, :19]
    lse = np.log(np.exp(inl).sum(1))
    np.testing.assert_allclose(score_map(z, "energy"), -lse, rtol=1e-5)
    np.testing.assert_allclose(score_map(z, "max_softmax"), 1 - np.exp(inl.max(1) - lse), rtol=1e-5, atol=1e-7)


def test_densehybrid_combines_anomaly_posterior_and_inlier_energy():
    z = _logits()
    lse_all = np.log(np.exp(z).sum(1))
    lse_in = np.log(np.exp(z[:, :19]).sum(1))
    np.testing.assert_allclose(score_map(z, "densehybrid"), z[:, 19] - lse_all - lse_in, rtol=1e-5)


def test_torch_input_keeps_autograd_and_single_image_shape():
    z = torch.randn(20, 8, 8, requires_grad=True)
    s = score_map(z, "energy")
    assert isinstance(s, torch.Tensor) and s.shape == (8, 8)
    s.sum().backward()
    assert z.grad is not None


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown score method 'entropy'"):
        score_map(_logits(), "entropy")
    with pytest.raises(ValueError, match="shape"):
        score_map(np.zeros((20, 8), np.float32))
    with pytest.raises(TypeError, match="floating"):
        score_map(np.zeros((1, 20, 2, 2), np.int64))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        score_map([[1.0]])
