"""Patch sources for fine-tuning: ``patch_source(n, rng) -> uint8 (n, p, p, 3)``.

The fine-tuning loop only sees this interface; the pasting itself is
:func:`flow_anomaly_ros.synthesis.paste.paste_batch`. Sources:

- ``random_texture`` (default until a patch MAF exists): random smooth colour fields, stripes, checkerboards and
  blobs in saturated colours: cheap, varied, and unlike any class of the street scenes.
- ``noise``: uniform RGB noise (:func:`flow_anomaly_ros.synthesis.sampling.uniform_noise_source`).
- ``npz``: patches sampled offline (``flow-anomaly maf sample``), an ``.npz`` with a ``patches`` array.
- ``maf``: the paper's MAF patch flow (``flow-anomaly maf train``) sampled from its low-likelihood region through
  :class:`~flow_anomaly_ros.synthesis.sampling.LowLikelihoodSampler`, behind a refreshed
  :class:`~flow_anomaly_ros.synthesis.sampling.PatchPool` (MAF sampling is sequential in the patch dimension).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flow_anomaly_ros.segmentation.config import PatchConfig

PatchSource = Callable[[int, np.random.Generator], np.ndarray]


def random_texture_source(patch_size: int = 8) -> PatchSource:
    """Random textures: smooth gradients, stripes, checkerboards and blobs in random saturated colours."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    p = int(patch_size)
    yy, xx = np.mgrid[0:p, 0:p].astype(np.float32) / max(1, p - 1)

    def one(rng: np.random.Generator) -> np.ndarray:
        c0, c1 = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
        kind = rng.integers(4)
        if kind == 0:  # gradient
            a = rng.uniform(0, 2 * np.pi)
            t = np.clip((np.cos(a) * xx + np.sin(a) * yy + 1) / 2, 0, 1)
        elif kind == 1:  # stripes
            f, a = rng.uniform(1, 4), rng.uniform(0, np.pi)
            t = (np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy)) > 0).astype(np.float32)
        elif kind == 2:  # checkerboard
            k = int(rng.integers(2, 5))
            t = ((np.floor(xx * k) + np.floor(yy * k)) % 2).astype(np.float32)
        else:  # blob
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.5)
            t = (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).astype(np.float32)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 8, (p, p, 3))
        return np.clip(img, 0, 255).astype(np.uint8)

    def source(n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([one(rng) for _ in range(int(n))]) if n > 0 else np.zeros((0, p, p, 3), np.uint8)

    return source


def make_patch_source(cfg: PatchConfig) -> PatchSource:
    """Build the configured source (imports the synthesis package only for the sources that need it)."""
    if cfg.source == "random_texture":
        return random_texture_source(cfg.patch_size)
    if cfg.source == "noise":
        from flow_anomaly_ros.synthesis.sampling import uniform_noise_source

        return uniform_noise_source(cfg.patch_size)
    if cfg.source == "npz":
        with np.load(str(cfg.path)) as data:
            if "patches" not in data:
                raise ValueError(f"{cfg.path} has no 'patches' array (keys: {list(data.keys())})")
            pool = data["patches"]
        if pool.ndim != 4 or pool.shape[-1] != 3 or pool.dtype != np.uint8 or len(pool) == 0:
            raise ValueError(f"{cfg.path}: expected uint8 (n, p, p, 3) patches, got {pool.dtype} {pool.shape}")

        def from_file(n: int, rng: np.random.Generator) -> np.ndarray:
            return pool[rng.integers(0, len(pool), int(n))]

        return from_file
    if cfg.source == "maf":
        from flow_anomaly_ros.synthesis.patch_flow import PatchFlow
        from flow_anomaly_ros.synthesis.sampling import LowLikelihoodSampler, PatchPool, SamplerConfig

        kwargs = {"mode": cfg.maf_mode}
        if cfg.maf_temperature is not None:
            kwargs["temperature"] = cfg.maf_temperature
        sampler = LowLikelihoodSampler(PatchFlow.load(str(cfg.path)), SamplerConfig(**kwargs))
        return PatchPool(sampler, size=cfg.pool_size, refresh_every=cfg.pool_size * 4)
    raise ValueError(f"unknown patch source {cfg.source!r}")
