"""Robust feature normalisation fitted on clean training windows only.

``z = (x - median) / scale`` with ``scale = IQR / 1.349`` (the standard deviation for Gaussian data, but not pulled
by outliers). Features whose IQR is zero on clean data (e.g. the unknown-CAN-id count, always 0 when nothing is
wrong) fall back to the standard deviation, then to ``min_scale``; such features then turn any deviation into a very
large ``z``, which is what a detector should see. Values are clipped to ``±clip`` so a wild input cannot overflow a
model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IQR_TO_STD = 1.349


@dataclass
class RobustNormaliser:
    center: np.ndarray
    scale: np.ndarray
    clip: float = 1e3

    @classmethod
    def fit(cls, x: np.ndarray, min_scale: float = 1e-3, clip: float = 1e3) -> RobustNormaliser:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"normaliser needs a 2-D array with at least 2 rows, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("normaliser training data contain NaN or Inf")
        q25, center, q75 = np.percentile(x, [25, 50, 75], axis=0)
        scale = (q75 - q25) / IQR_TO_STD
        std = x.std(axis=0)
        scale = np.where(scale > min_scale, scale, np.maximum(std, min_scale))
        return cls(center=center, scale=scale, clip=clip)

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def tensors(self, prefix: str = "normaliser.") -> dict[str, np.ndarray]:
        return {prefix + "center": self.center, prefix + "scale": self.scale}

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, np.ndarray], clip: float = 1e3, prefix: str = "normaliser."
    ) -> RobustNormaliser:
        return cls(
            center=np.asarray(tensors[prefix + "center"], np.float64),
            scale=np.asarray(tensors[prefix + "scale"], np.float64),
            clip=clip,
        )
