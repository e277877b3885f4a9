"""Masked Autoregressive Flow (MAF) on nflows: build, train by NLL with resumable checkpoints, sample with temperature.

The MAF of the paper (Hu & Kathula 2024, §2.2/§4.1, built on nflows [Durkan et al. 2020] after Papamakarios et al.
2017): ``num_transforms`` masked affine autoregressive transforms (MADE conditioners), each preceded by a
permutation (random by default, or reversal), over a standard normal base. nflows 0.14 parameterises the scale with
``softplus(.) + 1e-3``, so the likelihood has no artificial ceiling (unlike its coupling layers).

Density evaluation is one network pass per transform; sampling inverts each transform one dimension at a time.
nflows' own ``inverse`` runs the whole MADE once per dimension (``features`` full passes per transform;
``shared/notes/ml-stack.md`` measured about 15 s per 1000 samples at 192-d on 2 cores). :func:`fast_inverse` computes
the same numbers degree by degree (MADE's hidden unit of degree ``d`` only depends on inputs ``1..d``, so each unit is
evaluated exactly once, when its inputs are final): the whole inversion costs about one forward pass plus a Python
loop over the dimensions. Tests check it against nflows' ``inverse``.

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


class _DegreeWiseMADE:
    """Evaluates an nflows MADE (feed-forward or residual blocks, no batch norm, no context) one degree at a time."""

    def __init__(self, made: torch.nn.Module, features: int) -> None:
        self.features = features
        self.activation = made.activation
        self.residual = bool(made.use_residual_blocks)
        first = made.initial_layer
        self.w0 = (first.weight * first.mask).detach()
        self.b0 = first.bias.detach()
        self.idx0 = self._by_degree(first.degrees)
        self.blocks = []
        for block in made.blocks:
            if self.residual:
                l0, l1 = block.linear_layers
                layers = [
                    ((l0.weight * l0.mask).detach(), l0.bias.detach()),
                    ((l1.weight * l1.mask).detach(), l1.bias.detach()),
                ]
                self.blocks.append((layers, self._by_degree(l1.degrees)))
            else:
                lin = block.linear
                self.blocks.append(
                    ([((lin.weight * lin.mask).detach(), lin.bias.detach())], self._by_degree(lin.degrees))
                )
        final = made.final_layer
        self.wf = (final.weight * final.mask).detach()
        self.bf = final.bias.detach()

    def _by_degree(self, degrees: torch.Tensor) -> dict[int, torch.Tensor]:
        return {int(d): torch.nonzero(degrees == d).flatten() for d in torch.unique(degrees)}

    @staticmethod
    def supports(transform: object) -> bool:
        made = getattr(transform, "autoregressive_net", None)
        if not isinstance(transform, MaskedAffineAutoregressiveTransform) or made is None:
            return False
        if hasattr(made, "context_layer"):
            return False
        return not any(
            getattr(b, "batch_norm", None) is not None or getattr(b, "use_batch_norm", False) for b in made.blocks
        )

    def inverse(
        self, transform: MaskedAffineAutoregressiveTransform, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        act = self.activation
        n, d_total = z.shape
        x = torch.zeros_like(z)
        pre0 = self.b0.expand(n, -1).clone()  # first-layer pre-activations, updated as inputs become known
        hidden = [torch.zeros(n, self.w0.shape[0]) for _ in range(len(self.blocks) + 1)]
        inner = [torch.zeros(n, self.w0.shape[0]) for _ in self.blocks]  # residual blocks' middle activations
        logabsdet = torch.zeros(n)
        eps = transform._epsilon
        for j in range(d_total):  # feature j has degree j + 1
            if j > 0:
                # inputs 1..j are final now: hidden units of degree j (and below, already done) become final
                idx = self.idx0.get(j)
                if idx is not None and len(idx):
                    h = pre0[:, idx]
                    hidden[0][:, idx] = h if self.residual else act(h)
                for b, (layers, bidx) in enumerate(self.blocks):
                    idx = bidx.get(j)
                    if idx is None or not len(idx):
                        continue
                    prev = hidden[b]
                    if self.residual:
                        (w0, b0), (w1, b1) = layers
                        inner[b][:, idx] = act(act(prev) @ w0[idx].T + b0[idx])
                        hidden[b + 1][:, idx] = prev[:, idx] + inner[b] @ w1[idx].T + b1[idx]
                    else:
                        ((w, bias),) = layers
                        hidden[b + 1][:, idx] = act(prev @ w[idx].T + bias[idx])
            last = hidden[-1]
            params = last @ self.wf[2 * j : 2 * j + 2].T + self.bf[2 * j : 2 * j + 2]
            scale = torch.nn.functional.softplus(params[:, 0]) + eps
            xj = (z[:, j] - params[:, 1]) / scale
            x[:, j] = xj
            logabsdet -= torch.log(scale)
            pre0 += xj[:, None] * self.w0[:, j][None, :]
        return x, logabsdet


@torch.no_grad()
def fast_inverse(flow: Flow, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``flow._transform.inverse(z)`` with MAF layers inverted degree by degree (same result, far fewer FLOPs)."""
    transform = flow._transform
    parts = list(transform._transforms) if isinstance(transform, CompositeTransform) else [transform]
    total = torch.zeros(z.shape[0])
    out = z
    for t in reversed(parts):
        if _DegreeWiseMADE.supports(t):
            out, lad = _DegreeWiseMADE(t.autoregressive_net, t.features).inverse(t, out)
        else:
            out, lad = t.inverse(out)
        total = total + lad
    return out, total


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
        x, logabsdet_inv = fast_inverse(flow, z)
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
