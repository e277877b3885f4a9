"""Fine-tuning loss: cross-entropy on inlier pixels + anomaly loss on pasted pixels (+ optional DenseHybrid term).

Hu & Kathula 2024 (§4.1): "a combination of segmentation loss (standard cross-entropy for inlier regions) and anomaly
loss which encourages the model to classify synthetic anomalies as a new anomaly class". Both terms are averaged
over their own pixels, so the few pasted pixels are not drowned by the many inlier pixels, and weighted separately.

The optional energy term follows DenseHybrid (Grcić et al., ECCV 2022; β = 0.03 there): it pushes the unnormalised
inlier log-density ``logsumexp(inlier logits)`` down on anomaly pixels relative to inlier pixels. It is written as
``softplus(mean_anomaly(LSE) - mean_inlier(LSE))`` so that it is bounded below and cannot be lowered forever by
shifting all logits.

Targets are trainIds (0..K-1 inliers), ``anomaly_index`` (K) on pasted pixels and ``ignore_index`` (255) elsewhere.

Example::

    loss_fn = AnomalySegmentationLoss(anomaly_weight=1.0, energy_weight=0.03)
    total, parts = loss_fn(logits, target)  # parts: {"inlier_ce": ..., "anomaly_ce": ..., "energy": ...}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flow_anomaly_ros.segmentation.classes import ANOMALY_ID, IGNORE_ID

DENSEHYBRID_BETA = 0.03  # DenseHybrid's weight of the density term


class AnomalySegmentationLoss(nn.Module):
    """``total = w_in * CE_inlier + w_anom * CE_anomaly + w_energy * energy``; returns ``(total, parts)``."""

    def __init__(
        self,
        inlier_weight: float = 1.0,
        anomaly_weight: float = 1.0,
        energy_weight: float = 0.0,
        anomaly_index: int = ANOMALY_ID,
        ignore_index: int = IGNORE_ID,
    ) -> None:
        super().__init__()
        for name, value in (("inlier_weight", inlier_weight), ("anomaly_weight", anomaly_weight),
                            ("energy_weight", energy_weight)):  # fmt: skip
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.inlier_weight, self.anomaly_weight, self.energy_weight = inlier_weight, anomaly_weight, energy_weight
        self.anomaly_index, self.ignore_index = anomaly_index, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"logits (N,C,H,W) and target (N,H,W) do not match: {tuple(logits.shape)} vs "
                             f"{tuple(target.shape)}")  # fmt: skip
        if logits.shape[1] != self.anomaly_index + 1:
            raise ValueError(f"logits have {logits.shape[1]} classes; expected {self.anomaly_index + 1} (anomaly last)")
        target = target.long()
        logits = logits.float()
        anomaly = target == self.anomaly_index
        inlier = (target != self.ignore_index) & ~anomaly
        bad = inlier & (target > self.anomaly_index)
        if bad.any():
            raise ValueError(f"target holds labels outside 0..{self.anomaly_index} and {self.ignore_index}")
        zero = logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive when a term is empty
        inlier_ce = (
            F.cross_entropy(logits, target.masked_fill(~inlier, self.ignore_index), ignore_index=self.ignore_index)
            if inlier.any()
            else zero
        )
        log_probs = None
        if anomaly.any():
            log_probs = F.log_softmax(logits, dim=1)[:, self.anomaly_index]
            anomaly_ce = -log_probs[anomaly].mean()
        else:
            anomaly_ce = zero
        energy = zero
        if self.energy_weight > 0 and anomaly.any() and inlier.any():
            lse = torch.logsumexp(logits[:, : self.anomaly_index], dim=1)
            energy = F.softplus(lse[anomaly].mean() - lse[inlier].mean())
        total = self.inlier_weight * inlier_ce + self.anomaly_weight * anomaly_ce + self.energy_weight * energy
        parts = {"inlier_ce": float(inlier_ce.detach()), "anomaly_ce": float(anomaly_ce.detach()),
                 "energy": float(energy.detach()), "anomaly_pixels": int(anomaly.sum())}  # fmt: skip
        return total, parts
