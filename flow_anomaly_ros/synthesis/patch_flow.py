"""The patch MAF as one saved model: flow + patch encoding + the inlier log-likelihood distribution.

A :class:`PatchFlow` is what ``flow-anomaly maf train`` writes and ``maf sample`` / the fine-tuning read: the nflows
MAF (:mod:`flow_anomaly_ros.flows.maf`), the :class:`~flow_anomaly_ros.synthesis.patches.PatchCodec` that maps uint8
patches to the flow's space, and the sorted log-likelihoods of held-out inlier patches. The last one turns a quantile
("below the 1 % of inlier patches") into a log-likelihood threshold for rejection sampling
(:mod:`flow_anomaly_ros.synthesis.sampling`).

Model directory kind ``synthesis/patch-maf`` (safetensors + JSON via :mod:`flow_anomaly_ros.model_store`).

Example::

    pf = train_patch_flow(patches, MAFConfig(features=192), steps=2000, checkpoint_dir="work/maf_ckpt")
    pf.save("models/patch_maf")
    pf = PatchFlow.load("models/patch_maf")
    pf.log_prob(patches[:10]); pf.threshold(0.01)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nflows.flows import Flow

from flow_anomaly_ros.flows.maf import (
    MAFConfig,
    MAFTrainer,
    TrainProgress,
    build_maf,
    flow_state_tensors,
    load_flow_state,
    log_prob_batched,
)
from flow_anomaly_ros.model_store import ModelFileError, load_model_dir, save_model_dir
from flow_anomaly_ros.synthesis.patches import PatchCodec

MODEL_KIND = "synthesis/patch-maf"
MAX_CALIBRATION = 4096


@dataclass
class PatchFlow:
    """A MAF over ``patch_size``² RGB patches plus what is needed to sample and reject in pixel terms."""

    flow: Flow
    config: MAFConfig
    codec: PatchCodec
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # sorted inlier log p
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> int:
        return self.codec.patch_size

    @classmethod
    def untrained(cls, patches: np.ndarray, config: MAFConfig) -> PatchFlow:
        """A randomly initialised MAF with the codec fitted on ``patches`` (the joint schedule starts here)."""
        codec = PatchCodec.fit(patches)
        if config.features != codec.features:
            raise ValueError(f"MAF features {config.features} != {codec.features} for {codec.patch_size}px patches")
        flow = build_maf(config)
        flow.eval()
        return cls(flow, config, codec, info={"trained_steps": 0})

    def log_prob(self, patches: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Log-likelihood of uint8 patches under the flow (no dequantisation noise: deterministic)."""
        was_training = self.flow.training
        self.flow.eval()
        try:
            return log_prob_batched(self.flow, self.codec.encode(patches), batch_size).numpy()
        finally:
            self.flow.train(was_training)

    def calibrate(self, patches: np.ndarray) -> np.ndarray:
        """Record the log-likelihoods of (held-out) inlier patches; quantile thresholds are read from them."""
        lp = self.log_prob(patches[:MAX_CALIBRATION])
        lp = lp[np.isfinite(lp)]
        if len(lp) == 0:
            raise ValueError("calibration patches have no finite log-likelihood under this MAF")
        self.calibration = np.sort(lp).astype(np.float32)
        return self.calibration

    def threshold(self, quantile: float) -> float:
        """The log-likelihood below which ``quantile`` of the calibration inlier patches lie."""
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        if len(self.calibration) == 0:
            raise ValueError("this MAF has no inlier calibration; call calibrate(patches) first")
        return float(np.quantile(self.calibration, quantile))

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra_manifest: Mapping[str, Any] | None = None) -> Path:
        tensors = {**flow_state_tensors(self.flow), **self.codec.tensors(), "calibration.log_prob": self.calibration}
        manifest = {
            "config": asdict(self.config),
            "patch_size": self.patch_size,
            "input": {"dtype": "uint8", "shape": ["n", self.patch_size, self.patch_size, 3], "color": "RGB"},
            "calibration_size": len(self.calibration),
            "info": self.info,
            **(extra_manifest or {}),
        }
        return save_model_dir(path, MODEL_KIND, tensors, manifest)

    @classmethod
    def load(cls, path: str | Path) -> PatchFlow:
        manifest, tensors = load_model_dir(path, expected_kind=MODEL_KIND)
        try:
            config = MAFConfig.from_dict(manifest["config"])
            codec = PatchCodec.from_tensors(int(manifest["patch_size"]), tensors)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"patch MAF manifest in {path} is invalid: {exc}") from exc
        flow = build_maf(config)
        load_flow_state(flow, tensors, source=str(path))
        flow.eval()
        calibration = np.asarray(tensors.get("calibration.log_prob", np.zeros(0)), np.float32)
        return cls(flow, config, codec, calibration, dict(manifest.get("info", {})))


def split_holdout(patches: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle and split into (train, holdout); the holdout calibrates the likelihood quantiles."""
    order = rng.permutation(len(patches))
    n_hold = round(len(patches) * fraction) if len(patches) > 1 else 0
    n_hold = min(max(n_hold, 1 if fraction > 0 and len(patches) > 1 else 0), len(patches) - 1)
    return patches[order[n_hold:]], patches[order[:n_hold]]


def train_patch_flow(
    patches: np.ndarray,
    config: MAFConfig,
    steps: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 256,
    holdout_fraction: float = 0.1,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    seed: int = 0,
    callback: Callable[[TrainProgress], bool | None] | None = None,
    progress: bool = False,
) -> PatchFlow:
    """Pre-train schedule: fit the codec, train the MAF by NLL (resuming from ``checkpoint_dir``), calibrate.

    Returns the trained :class:`PatchFlow`; ``info`` records steps, final and held-out NLL (nats per patch).
    """
    rng = np.random.default_rng(seed)
    train, holdout = split_holdout(patches, holdout_fraction, rng)
    pf = PatchFlow.untrained(train, config)
    data = pf.codec.encode(train, rng)
    trainer = MAFTrainer(
        pf.flow,
        data,
        config,
        lr=lr,
        batch_size=batch_size,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    reached = trainer.fit(steps, callback=callback, progress=progress)
    pf.flow.eval()
    cal = holdout if len(holdout) else train
    pf.calibrate(cal)
    pf.info = {
        "trained_steps": reached,
        "train_patches": len(train),
        "holdout_patches": len(holdout),
        "final_train_nll": trainer.last_loss,
        "holdout_nll": float(-pf.calibration.mean()),
        "lr": lr,
        "batch_size": trainer.batch_size,
    }
    return pf


def torch_generator_from(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from a numpy generator, so one seed drives both."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
