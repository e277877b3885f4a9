"""Per-pixel anomaly scores from segmentation logits: the paper's anomaly-class probability and the baselines.

All scores are "higher = more anomalous", computed from logits ``N x (K+1) x H x W`` (or ``(K+1) x H x W``) whose
last channel is the anomaly class:

- ``anomaly_prob``: softmax probability of the anomaly class (Hu & Kathula 2024: anomalies as an extra class).
- ``max_softmax``: 1 − max softmax over the K inlier classes (Hendrycks & Gimpel 2017).
- ``max_logit``: − max inlier logit (Hendrycks et al. 2022, "Scaling OOD detection").
- ``energy``: − logsumexp of the inlier logits, the free energy (Liu et al. 2020).
- ``densehybrid``: log p(anomaly | x) − logsumexp(inlier logits), i.e. the discriminative anomaly posterior combined
  with the unnormalised inlier density as in DenseHybrid (Grcić et al., ECCV 2022), here with the anomaly posterior
  taken from the extra class of the same head instead of a separate 2-class head.

The baselines ignore the anomaly channel so that they measure what a closed-set model would give.
Accepts numpy arrays (returns numpy) or torch tensors (returns tensors, autograd intact).

Example::

    scores = score_map(logits, "anomaly_prob")  # (N, H, W) float32
"""

from __future__ import annotations

import numpy as np
import torch

from flow_anomaly_ros.segmentation.spec import SCORE_METHODS

__all__ = ["SCORE_METHODS", "score_map"]


def _scores(logits: torch.Tensor, method: str) -> torch.Tensor:
    inlier = logits[:, :-1]
    if method == "anomaly_prob":
        return torch.softmax(logits, dim=1)[:, -1]
    if method == "max_softmax":
        return 1.0 - torch.softmax(inlier, dim=1).amax(dim=1)
    if method == "max_logit":
        return -inlier.amax(dim=1)
    if method == "energy":
        return -torch.logsumexp(inlier, dim=1)
    if method == "densehybrid":
        return torch.log_softmax(logits, dim=1)[:, -1] - torch.logsumexp(inlier, dim=1)
    raise ValueError(f"unknown score method {method!r}; choose one of {', '.join(SCORE_METHODS)}")


def score_map(logits: np.ndarray | torch.Tensor, method: str = "anomaly_prob") -> np.ndarray | torch.Tensor:
    """Anomaly score per pixel (higher = more anomalous) from logits with the anomaly class last."""
    if method not in SCORE_METHODS:
        raise ValueError(f"unknown score method {method!r}; choose one of {', '.join(SCORE_METHODS)}")
    is_numpy = isinstance(logits, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(logits)) if is_numpy else logits
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"logits must be a numpy array or torch tensor, got {type(logits).__name__}")
    if t.ndim not in (3, 4) or t.shape[-3] < 2:
        raise ValueError(f"logits must be (N, C, H, W) or (C, H, W) with C >= 2, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"logits must be floating point, got {t.dtype}")
    squeeze = t.ndim == 3
    batch = t.unsqueeze(0) if squeeze else t
    out = _scores(batch.float(), method)
    out = out[0] if squeeze else out
    return out.numpy().astype(np.float32, copy=False) if is_numpy else out
