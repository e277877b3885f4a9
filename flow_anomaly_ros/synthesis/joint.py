"""The joint / alternating schedule: the MAF trains while the segmentation model fine-tunes, sampled from step 0.

The paper's own plan (Hu & Kathula 2024, §4.1, after Grcić et al. 2022): "instead of training the MAF separately we
sample the patches from the beginning even when the MAF is not trained yet". :class:`JointMAFSource` is a patch
source (``patch_source(n, rng)``) that, on every call from the fine-tuning loop, first takes
``maf_steps_per_call`` NLL steps on inlier patches and then samples the requested patches from the current MAF's
low-likelihood region. The likelihood quantiles are recomputed on a fixed held-out inlier set every
``recalibrate_every`` calls, because the MAF's density moves while it trains. Early on the MAF is random, so its
samples are near-noise; they become image-like as it learns (the progression of the paper's Figure 9).

Example::

    source = JointMAFSource.create(inlier_patches, MAFConfig(features=192), SamplerConfig(mode="outside"))
    finetune(cfg, patch_source=source)
"""

from __future__ import annotations

import threading

import numpy as np

from flow_anomaly_ros.flows.maf import MAFConfig, MAFTrainer
from flow_anomaly_ros.synthesis.patch_flow import PatchFlow, split_holdout
from flow_anomaly_ros.synthesis.sampling import LowLikelihoodSampler, SamplerConfig


class JointMAFSource:
    """Alternates MAF NLL steps with low-likelihood sampling; call it like any patch source."""

    def __init__(
        self,
        patch_flow: PatchFlow,
        trainer: MAFTrainer,
        holdout: np.ndarray,
        sampler_config: SamplerConfig,
        maf_steps_per_call: int = 1,
        recalibrate_every: int = 10,
    ) -> None:
        if maf_steps_per_call < 0 or recalibrate_every < 1:
            raise ValueError("maf_steps_per_call must be >= 0 and recalibrate_every >= 1")
        self.patch_flow, self.trainer, self.holdout = patch_flow, trainer, holdout
        self.sampler = LowLikelihoodSampler(patch_flow, sampler_config)
        self.maf_steps_per_call, self.recalibrate_every = maf_steps_per_call, recalibrate_every
        self.calls = 0
        self._lock = threading.Lock()
        patch_flow.calibrate(holdout)

    @classmethod
    def create(
        cls,
        inlier_patches: np.ndarray,
        config: MAFConfig,
        sampler_config: SamplerConfig,
        maf_steps_per_call: int = 1,
        recalibrate_every: int = 10,
        lr: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
    ) -> JointMAFSource:
        """An untrained MAF over ``inlier_patches`` (10 % held out for the likelihood quantiles)."""
        rng = np.random.default_rng(seed)
        train, holdout = split_holdout(inlier_patches, 0.1, rng)
        pf = PatchFlow.untrained(train, config)
        trainer = MAFTrainer(pf.flow, pf.codec.encode(train, rng), config, lr=lr, batch_size=batch_size, seed=seed)
        return cls(pf, trainer, holdout, sampler_config, maf_steps_per_call, recalibrate_every)

    @property
    def maf_steps(self) -> int:
        return self.trainer.step

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        with self._lock:
            for _ in range(self.maf_steps_per_call):
                self.trainer.train_step()
            self.patch_flow.flow.eval()
            self.calls += 1
            if self.calls % self.recalibrate_every == 0:
                self.patch_flow.calibrate(self.holdout)
            return self.sampler(n, rng)
