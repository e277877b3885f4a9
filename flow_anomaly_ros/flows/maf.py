"""Masked Autoregressive Flow (MAF) on nflows: build, train by NLL with resumable checkpoints, sample with temperature.

The MAF of the paper (Hu & Kathula 2024, §2.2/§4.1, built on nflows [Durkan et al. 2020] after Papamakarios et al.
2017): ``num_transforms`` masked affine autoregressive transforms (MADE conditioners), each preceded by a
permutation (random by default, or reversal), over a standard normal base. nflows 0.14 parameterises the scale with
``softplus(.) + 1e-3``, so the likelihood has no artificial ceiling (unlike its coupling layers).

Density evaluation is one network pass per transform; sampling inverts each transform one dimension at a time, so it
costs ``features`` network passes per transform (``shared/notes/ml-stack.md``: about 15 s per 1000 samples at 192-d
on 2 cores). That is why patches are small (8×8×3 = 192-d by default) and sampling is batched.

Checkpoints are model directories (:mod:`flow_anomaly_ros.model_store`, safetensors + JSON, written atomically) that
hold the flow, the Adam state, the step and the batch-sampling generator, so training resumes exactly where it was
killed.

Example::

    flow = build_maf(MAFConfig(features=192, num_transforms=4, hidden_features=128))
    trainer = MAFTrainer(flow, data, lr=1e-3, batch_size=256, checkpoint_dir="ckpt")
    trainer.fit(total_steps=2000)            # resumes from ckpt/ if it exists
    x, log_p = sample_with_temperature(flow, 512, temperature=1.5)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    RandomPermutation,
    ReversePermutation,
)

from flow_anomaly_ros.model_store import ModelFileError, load_model_dir, read_manifest, save_model_dir

CHECKPOINT_KIND = "flows/maf-checkpoint"
PERMUTATIONS = ("random", "reverse")
LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class MAFConfig:
    """Architecture of the MAF. Defaults are sized for 8×8×3 patches on a CPU (see the module docstring)."""

    features: int
    num_transforms: int = 4
    hidden_features: int = 128
    num_blocks: int = 2
    use_residual_blocks: bool = False
    permutation: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("features", "num_transforms", "hidden_features", "num_blocks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MAFConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.permutation not in PERMUTATIONS:
            raise ValueError(f"MAFConfig.permutation must be one of {PERMUTATIONS}, got {self.permutation!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MAFConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def build_maf(config: MAFConfig) -> Flow:
    """An nflows ``Flow``: [permutation → MaskedAffineAutoregressiveTransform] × K over a standard normal."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)  # random permutations and initial weights are part of the config
    try:
        transforms = []
        for _ in range(config.num_transforms):
            if config.permutation == "random":
                transforms.append(RandomPermutation(config.features))
            else:
                transforms.append(ReversePermutation(config.features))
            transforms.append(
                MaskedAffineAutoregressiveTransform(
                    features=config.features,
                    hidden_features=config.hidden_features,
                    num_blocks=config.num_blocks,
                    use_residual_blocks=config.use_residual_blocks,
                )
            )
        flow = Flow(CompositeTransform(transforms), StandardNormal([config.features]))
    finally:
        torch.random.set_rng_state(gen_state)
    return flow


def flow_state_tensors(flow: torch.nn.Module, prefix: str = "flow.") -> dict[str, torch.Tensor]:
    """The flow's parameters and buffers (permutations included) for :func:`save_model_dir`."""
    return {prefix + k: v.detach().cpu().contiguous() for k, v in flow.state_dict().items()}


def load_flow_state(flow: torch.nn.Module, tensors: Mapping[str, np.ndarray], prefix: str = "flow.", source="") -> None:
    """Load tensors written by :func:`flow_state_tensors`; raises :class:`ModelFileError` on any mismatch."""
    state = {k[len(prefix) :]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith(prefix)}
    try:
        flow.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"MAF weights in {source or 'model'} do not match the configured architecture: {exc}"
        ) from exc


@torch.no_grad()
def sample_with_temperature(
    flow: Flow, n: int, temperature: float = 1.0, generator: torch.Generator | None = None, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` samples from the flow with a base of ``N(0, T² I)``; returns ``(x, log p(x))`` under the flow.

    ``log p(x)`` is the flow's own (untempered) log-likelihood, computed from the same inverse pass, so rejection by
    likelihood costs nothing extra.
    """
    if n < 0:
        raise ValueError(f"number of samples must be >= 0, got {n}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    features = flow._distribution._shape[0]
    xs, lps = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        z = torch.randn(m, features, generator=generator) * temperature
        x, logabsdet_inv = flow._transform.inverse(z)
        base = -0.5 * (z**2).sum(1) - 0.5 * features * LOG_2PI
        xs.append(x)
        lps.append(base - logabsdet_inv)
    if not xs:
        return torch.zeros(0, features), torch.zeros(0)
    return torch.cat(xs), torch.cat(lps)


@torch.no_grad()
def log_prob_batched(flow: Flow, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``flow.log_prob`` in batches, without gradients."""
    return (
        torch.cat([flow.log_prob(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else x[:0, 0]
    )


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in state["state"].items():
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: Mapping[str, np.ndarray], meta: Mapping) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = torch.from_numpy(np.array(value))
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class TrainProgress:
    """What :meth:`MAFTrainer.fit` reports after every step (for progress bars, diagnostics and status topics)."""

    step: int
    total_steps: int
    loss: float
    elapsed_s: float


class MAFTrainer:
    """Trains a MAF by negative log-likelihood on a float ``(N, D)`` tensor, with atomic resumable checkpoints.

    ``checkpoint_dir``: if given, ``fit`` resumes from it when it exists and writes it every ``checkpoint_every``
    steps and at the end. The mini-batch order comes from a seeded generator saved in the checkpoint, so a resumed
    run sees the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        flow: Flow,
        data: torch.Tensor,
        config: MAFConfig,
        lr: float = 1e-3,
        batch_size: int = 256,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 100,
        seed: int = 0,
        grad_clip: float = 5.0,
    ) -> None:
        if data.ndim != 2 or data.shape[1] != config.features:
            raise ValueError(f"training data must be (N, {config.features}), got {tuple(data.shape)}")
        if len(data) == 0:
            raise ValueError("training data is empty")
        if not torch.isfinite(data).all():
            raise ValueError("training data contains NaN or Inf")
        self.flow, self.data, self.config = flow, data.float(), config
        self.batch_size = int(min(batch_size, len(data)))
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.grad_clip = grad_clip
        self.lr = lr
        self.optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.last_loss = float("nan")
        self.history: list[float] = []

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path or self.checkpoint_dir)
        opt_tensors, opt_meta = _optimizer_tensors(self.optimizer)
        tensors = {**flow_state_tensors(self.flow), **opt_tensors, "generator_state": self.generator.get_state()}
        manifest = {
            "config": asdict(self.config),
            "step": self.step,
            "loss": self.last_loss,
            "history": self.history[-1000:],
            "optimizer": opt_meta,
            "lr": self.lr,
            "batch_size": self.batch_size,
        }
        return save_model_dir(path, CHECKPOINT_KIND, tensors, manifest)

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        path = Path(path or self.checkpoint_dir)
        manifest, tensors = load_model_dir(path, expected_kind=CHECKPOINT_KIND)
        if MAFConfig.from_dict(manifest["config"]) != self.config:
            raise ModelFileError(
                f"checkpoint {path} was written for MAF config {manifest['config']}, not {asdict(self.config)}; "
                "delete it or use a matching configuration"
            )
        load_flow_state(self.flow, tensors, source=str(path))
        _load_optimizer_tensors(self.optimizer, tensors, manifest["optimizer"])
        self.generator.set_state(torch.from_numpy(np.array(tensors["generator_state"])))
        self.step = int(manifest["step"])
        self.last_loss = float(manifest.get("loss", float("nan")))
        self.history = list(manifest.get("history", []))

    def has_checkpoint(self) -> bool:
        if self.checkpoint_dir is None:
            return False
        try:
            read_manifest(self.checkpoint_dir, expected_kind=CHECKPOINT_KIND)
        except ModelFileError:
            return False
        return True

    # -- training ----------------------------------------------------------------------------------------------
    def train_step(self, batch: torch.Tensor | None = None) -> float:
        """One Adam step on ``-mean log p(batch)`` (a random mini-batch of the data when ``batch`` is None)."""
        self.flow.train()
        if batch is None:
            idx = torch.randint(0, len(self.data), (self.batch_size,), generator=self.generator)
            batch = self.data[idx]
        self.optimizer.zero_grad(set_to_none=True)
        loss = -self.flow.log_prob(batch).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"MAF loss became {loss.item()} at step {self.step}; lower the learning rate")
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.last_loss = float(loss.item())
        self.history.append(self.last_loss)
        return self.last_loss

    def fit(
        self,
        total_steps: int,
        resume: bool = True,
        callback: Callable[[TrainProgress], bool | None] | None = None,
        progress: bool = False,
    ) -> int:
        """Train until ``total_steps`` (resuming from the checkpoint if asked); returns the step reached.

        ``callback(progress)`` runs after every step; returning ``True`` stops early (a checkpoint is written).
        """
        if resume and self.has_checkpoint():
            self.load_checkpoint()
        start = time.monotonic()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, initial=self.step, desc="MAF NLL", unit="step")
        stopped = False
        try:
            while self.step < total_steps:
                loss = self.train_step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(nll=f"{loss:.2f}")
                if self.checkpoint_dir is not None and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if callback is not None and callback(
                    TrainProgress(self.step, total_steps, loss, time.monotonic() - start)
                ):
                    stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint_dir is not None and (stopped or self.step % self.checkpoint_every != 0):
            self.save_checkpoint()
        self.flow.eval()
        return self.step
