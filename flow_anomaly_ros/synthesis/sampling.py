"""Synthetic anomaly patches from the low-likelihood regions of the patch MAF, and the patch sources fine-tuning uses.

Two knobs of the paper (Hu & Kathula 2024, §2.2, §5, §6; after Grcić et al. 2022/2023):

- **temperature**: the base distribution is ``N(0, T² I)``; ``T > 1`` pushes samples away from the inlier mode.
- **rejection by the flow's own log-likelihood** against quantiles of held-out inlier patches:
  ``"outside"`` keeps samples with ``log p < q(low)`` (less likely than all but ``low`` of the inliers);
  ``"boundary"`` keeps ``q(low) ≤ log p < q(high)`` (the "boundary anomalies" the paper asks for in §6);
  ``"any"`` keeps everything (the paper's plain samples, Figure 9).

Sampling is batched; each round proposes ``batch_size`` candidates until ``n`` are accepted or the proposal budget
(``max_proposals``) is spent, in which case the remaining slots take the proposals closest to the acceptance band and
``SamplingStats.fallback`` counts them (it never silently returns fewer patches). Acceptance rate and samples/s are
reported in :class:`SamplingStats`.

Everything that produces patches follows the fine-tuning interface ``patch_source(n, rng) -> uint8 (n, p, p, 3)``:
:class:`LowLikelihoodSampler`, :class:`PatchPool` (a cache of sampled patches with random dihedral augmentation, since
MAF sampling costs one network pass per dimension) and :func:`uniform_noise_source` (the noise baseline).

Example::

    sampler = LowLikelihoodSampler(PatchFlow.load("models/patch_maf"), SamplerConfig(mode="outside"))
    patches, stats = sampler.sample(256, np.random.default_rng(0))
    stats.acceptance_rate, stats.samples_per_s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from flow_anomaly_ros.flows.maf import sample_with_temperature
from flow_anomaly_ros.synthesis.patch_flow import PatchFlow, torch_generator_from
from flow_anomaly_ros.synthesis.sampling_defaults import (  # re-exported here; defined once for the CLI
    DEFAULT_HIGH_QUANTILE,
    DEFAULT_LOW_QUANTILE,
    DEFAULT_TEMPERATURE,
    SAMPLING_MODES,
)

PatchSource = Callable[[int, np.random.Generator], np.ndarray]


@dataclass
class SamplerConfig:
    """How to sample: ``mode`` (outside | boundary | any), temperature, quantiles, batch and proposal budget."""

    mode: str = "outside"
    temperature: float = DEFAULT_TEMPERATURE
    low_quantile: float = DEFAULT_LOW_QUANTILE
    high_quantile: float = DEFAULT_HIGH_QUANTILE
    batch_size: int = 1024  # MAF inversion is sequential in D; larger batches amortise the per-pass overhead
    max_proposals_factor: float = 20.0  # give up after this many proposals per requested patch

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {self.mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.low_quantile < self.high_quantile <= 1.0:
            raise ValueError(
                f"quantiles must satisfy 0 <= low < high <= 1, got low={self.low_quantile} high={self.high_quantile}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_proposals_factor < 1:
            raise ValueError(f"max_proposals_factor must be >= 1, got {self.max_proposals_factor}")


@dataclass
class SamplingStats:
    """What one or more sampling calls cost and yielded."""

    requested: int = 0
    proposed: int = 0
    passed: int = 0  # proposals inside the acceptance band (whether or not they were needed)
    accepted: int = 0  # proposals returned (at most ``requested``)
    fallback: int = 0
    seconds: float = 0.0
    low_threshold: float = float("nan")
    high_threshold: float = float("nan")

    @property
    def acceptance_rate(self) -> float:
        return self.passed / self.proposed if self.proposed else float("nan")

    @property
    def samples_per_s(self) -> float:
        """Proposals (MAF samples) per second."""
        return self.proposed / self.seconds if self.seconds > 0 else float("nan")

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else float("nan")

    def add(self, other: SamplingStats) -> None:
        self.requested += other.requested
        self.proposed += other.proposed
        self.passed += other.passed
        self.accepted += other.accepted
        self.fallback += other.fallback
        self.seconds += other.seconds
        self.low_threshold, self.high_threshold = other.low_threshold, other.high_threshold

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d.update(
            acceptance_rate=self.acceptance_rate, samples_per_s=self.samples_per_s, accepted_per_s=self.accepted_per_s
        )
        return d


class LowLikelihoodSampler:
    """Temperature sampling + likelihood rejection from a :class:`PatchFlow`; callable as a patch source.

    The thresholds come from the flow's calibration (held-out inlier log-likelihoods). In the joint schedule the MAF
    changes while fine-tuning runs; call :meth:`recalibrate` with fresh inlier patches after MAF updates.
    """

    def __init__(self, patch_flow: PatchFlow, config: SamplerConfig | None = None) -> None:
        self.patch_flow = patch_flow
        self.config = config or SamplerConfig()
        self.total = SamplingStats()
        self.last = SamplingStats()
        self._lock = threading.Lock()

    def recalibrate(self, inlier_patches: np.ndarray) -> None:
        self.patch_flow.calibrate(inlier_patches)

    def thresholds(self) -> tuple[float, float]:
        """(low, high) log-likelihood thresholds of the configured quantiles (``-inf, inf`` for mode ``any``)."""
        if self.config.mode == "any":
            return float("-inf"), float("inf")
        low = self.patch_flow.threshold(self.config.low_quantile)
        high = self.patch_flow.threshold(self.config.high_quantile) if self.config.mode == "boundary" else low
        return low, high

    def _accept(self, log_p: np.ndarray, low: float, high: float) -> np.ndarray:
        finite = np.isfinite(log_p)
        if self.config.mode == "any":
            return np.ones_like(finite)
        if self.config.mode == "outside":
            return finite & (log_p < low)
        return finite & (log_p >= low) & (log_p < high)

    def _distance(self, log_p: np.ndarray, low: float, high: float) -> np.ndarray:
        """How far a rejected proposal is from the acceptance band (for the fallback ranking)."""
        lp = np.where(np.isfinite(log_p), log_p, np.inf)
        if self.config.mode == "outside":
            return lp - low
        return np.where(lp < low, low - lp, lp - high)

    @torch.no_grad()
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, SamplingStats]:
        """``n`` uint8 patches from the configured region, and the statistics of this call."""
        if n < 0:
            raise ValueError(f"number of patches must be >= 0, got {n}")
        with self._lock:
            return self._sample(n, rng)

    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, SamplingStats]:
        cfg = self.config
        low, high = self.thresholds()
        stats = SamplingStats(requested=n, low_threshold=low, high_threshold=high)
        p = self.patch_flow.patch_size
        if n == 0:
            return np.zeros((0, p, p, 3), np.uint8), stats
        gen = torch_generator_from(rng)
        flow = self.patch_flow.flow
        was_training = flow.training
        flow.eval()
        start = time.perf_counter()
        accepted: list[np.ndarray] = []
        rejected_x: list[torch.Tensor] = []
        rejected_d: list[np.ndarray] = []
        have = 0
        budget = int(np.ceil(n * cfg.max_proposals_factor))
        try:
            while have < n and stats.proposed < budget:
                m = min(cfg.batch_size, budget - stats.proposed)
                if cfg.mode == "any":
                    m = min(m, n - have)
                x, log_p = sample_with_temperature(flow, m, cfg.temperature, generator=gen, batch_size=m)
                lp = log_p.numpy()
                ok = self._accept(lp, low, high)
                stats.proposed += m
                stats.passed += int(ok.sum())
                take = np.flatnonzero(ok)[: n - have]
                if len(take):
                    accepted.append(self.patch_flow.codec.decode(x[take]))
                    have += len(take)
                if have < n:
                    bad = np.flatnonzero(~ok)
                    rejected_x.append(x[bad])
                    rejected_d.append(self._distance(lp[bad], low, high))
            stats.accepted = have
            if have < n:
                xs, ds = torch.cat(rejected_x), np.concatenate(rejected_d)
                best = np.argsort(ds, kind="stable")[: n - have]
                accepted.append(self.patch_flow.codec.decode(xs[best]))
                stats.fallback = len(best)
        finally:
            flow.train(was_training)
        stats.seconds = time.perf_counter() - start
        self.last = stats
        self.total.add(stats)
        return np.concatenate(accepted)[:n], stats

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.sample(n, rng)[0]


def uniform_noise_source(patch_size: int) -> PatchSource:
    """Baseline negatives: i.i.d. uniform RGB noise patches (the "uniform-noise patches" arm of the experiment)."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")

    def source(n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, 256, (n, patch_size, patch_size, 3), dtype=np.uint8)

    return source


def dihedral(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips / 90° rotations (the 8 symmetries of the square) of each patch; a cheap augmentation."""
    out = patches.copy()
    k = rng.integers(0, 4, len(patches))
    flip = rng.random(len(patches)) < 0.5
    for i in range(len(patches)):
        q = np.rot90(out[i], int(k[i]))
        out[i] = q[:, ::-1] if flip[i] else q
    return out


class PatchPool:
    """A pool of ``size`` patches from a slow source; draws return random pool entries with dihedral augmentation.

    ``refresh_every`` draws (counted in patches), the pool is refilled from the source (``refresh_fraction`` of it),
    so a MAF that keeps training (joint schedule) keeps feeding fresh samples. Thread-safe.
    """

    def __init__(
        self,
        source: PatchSource,
        size: int = 512,
        refresh_every: int = 0,
        refresh_fraction: float = 0.25,
        augment: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        if not 0.0 < refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction must be in (0, 1], got {refresh_fraction}")
        self.source, self.size = source, int(size)
        self.refresh_every, self.refresh_fraction, self.augment = int(refresh_every), refresh_fraction, augment
        self.pool: np.ndarray | None = None
        self.drawn_since_refresh = 0
        self.refreshes = 0
        self._lock = threading.Lock()

    def fill(self, rng: np.random.Generator) -> None:
        """(Re)fill the whole pool from the source."""
        with self._lock:
            self.pool = self.source(self.size, rng)
            self.drawn_since_refresh = 0

    def refresh(self, rng: np.random.Generator) -> None:
        """Replace ``refresh_fraction`` of the pool with fresh patches from the source."""
        if self.pool is None:
            self.fill(rng)
            return
        m = max(1, round(self.size * self.refresh_fraction))
        fresh = self.source(m, rng)
        with self._lock:
            idx = rng.choice(self.size, m, replace=False)
            self.pool[idx] = fresh
            self.drawn_since_refresh = 0
            self.refreshes += 1

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.pool is None:
            self.fill(rng)
        elif self.refresh_every and self.drawn_since_refresh >= self.refresh_every:
            self.refresh(rng)
        with self._lock:
            out = self.pool[rng.integers(0, self.size, n)]
            self.drawn_since_refresh += n
        return dihedral(out, rng) if self.augment else out.copy()
