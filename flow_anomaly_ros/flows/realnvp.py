"""RealNVP density model on nflows: build, train, score (negative log-likelihood) and export to ONNX.

The paper scores windows of vehicle sensor data with a RealNVP flow (affine coupling layers, Dinh et al. 2017,
"Density estimation using Real NVP") and flags low-likelihood windows. We build it with nflows'
``SimpleRealNVP``. nflows' affine coupling uses ``scale = sigmoid(u + 2) + 1e-3`` (< 1.001), so without anything
else the log-likelihood is capped at ``log N(0; I)`` and scores saturate (see ../shared/notes/ml-stack.md). We set
``batch_norm_between_layers=True``, whose BatchNorm layers can expand volume and remove the cap.

Two nflows details handled here:
- nflows' BatchNorm initialises ``running_var`` to zeros; evaluating before any training-mode pass gives -inf/NaN.
  :func:`recalibrate_batchnorm` sets the running statistics to the exact statistics of the training data after
  training (momentum 1 over one full batch), so eval-mode scores are well defined and reproducible.
- Only ``log_prob`` is exported to ONNX (legacy exporter, opset 17, dynamic batch); sampling stays in torch.

Example::

    flow = build_realnvp(32, hidden_features=64, num_layers=6)
    train_flow(flow, x_train, epochs=30)
    nll = -log_prob_numpy(flow, x_test)
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable

import numpy as np
import torch

# Defaults (the paper gives no architecture for its RealNVP; these are small enough for CPU training in seconds)
DEFAULT_HIDDEN_FEATURES = 64
DEFAULT_NUM_LAYERS = 6
DEFAULT_BLOCKS_PER_LAYER = 2


def build_realnvp(
    features: int,
    hidden_features: int = DEFAULT_HIDDEN_FEATURES,
    num_layers: int = DEFAULT_NUM_LAYERS,
    num_blocks_per_layer: int = DEFAULT_BLOCKS_PER_LAYER,
    dropout_probability: float = 0.0,
) -> torch.nn.Module:
    """nflows SimpleRealNVP with BatchNorm between coupling layers (removes nflows' likelihood cap)."""
    from nflows.flows.realnvp import SimpleRealNVP

    if features < 2:
        raise ValueError(f"RealNVP needs at least 2 features, got {features}")
    return SimpleRealNVP(
        features=features,
        hidden_features=hidden_features,
        num_layers=num_layers,
        num_blocks_per_layer=num_blocks_per_layer,
        dropout_probability=dropout_probability,
        batch_norm_between_layers=True,
    )


def batchnorm_layers(flow: torch.nn.Module) -> list[torch.nn.Module]:
    from nflows.transforms.normalization import BatchNorm

    return [m for m in flow.modules() if isinstance(m, BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(flow: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running mean/var to the exact statistics of ``x`` propagated through the flow."""
    layers = batchnorm_layers(flow)
    saved = [bn.momentum for bn in layers]
    was_training = flow.training
    try:
        for bn in layers:
            bn.momentum = 1.0
        flow.train()
        flow.log_prob(x)
    finally:
        for bn, m in zip(layers, saved):
            bn.momentum = m
        flow.train(was_training)
    flow.eval()


def train_flow(
    flow: torch.nn.Module,
    x: np.ndarray,
    epochs: int = 60,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-5,
    noise_std: float = 0.05,
    validation_fraction: float = 0.15,
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> dict[str, float]:
    """Maximum-likelihood training with Adam; keeps the epoch with the best validation NLL.

    ``noise_std`` adds Gaussian noise to every training batch (in normalised feature units): it regularises the
    density on near-constant features (e.g. CAN rates) that would otherwise collapse to a spike. The validation rows
    are the *last* ``validation_fraction`` of ``x`` (time order), so early stopping sees later driving.
    Returns a summary (best epoch, train/validation NLL per feature).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < 20:
        raise ValueError(f"training data must be (n >= 20, d), got {x.shape}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_val = max(1, int(len(x) * validation_fraction))
    x_train = torch.from_numpy(x[:-n_val])
    x_val = torch.from_numpy(x[-n_val:])
    opt = torch.optim.Adam(flow.parameters(), lr=learning_rate, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    best = (float("inf"), -1, copy.deepcopy(flow.state_dict()))
    train_nll = float("nan")
    d = x.shape[1]
    for epoch in range(epochs):
        flow.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            xb = x_train[idx]
            if noise_std > 0:
                xb = xb + noise_std * torch.randn(xb.shape, generator=gen)
            loss = -flow.log_prob(xb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        sched.step()
        train_nll = total / max(count, 1) / d
        recalibrate_batchnorm(flow, x_train)
        with torch.no_grad():
            val_nll = float(-flow.log_prob(x_val).mean()) / d
        if np.isfinite(val_nll) and val_nll < best[0]:
            best = (val_nll, epoch, copy.deepcopy(flow.state_dict()))
        if progress is not None:
            progress(epoch, train_nll, val_nll)
    if best[1] < 0:
        raise RuntimeError("RealNVP training diverged: validation NLL was never finite")
    flow.load_state_dict(best[2])
    flow.eval()
    return {"best_epoch": best[1], "val_nll_per_dim": best[0], "train_nll_per_dim": train_nll, "epochs": epochs}


@torch.inference_mode()
def log_prob_numpy(flow: torch.nn.Module, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Eval-mode log-likelihood of rows of ``x`` (float64 result)."""
    flow.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    out = [flow.log_prob(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
    return torch.cat(out).double().numpy() if out else np.empty(0)


class _LogProb(torch.nn.Module):
    def __init__(self, flow: torch.nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)


def export_log_prob_onnx(flow: torch.nn.Module, features: int, opset: int = 17, batch: int | None = None) -> bytes:
    """ONNX model ``input (N, features) float32 -> log_prob (N,)`` of the eval-mode flow (legacy exporter).

    ``batch=None`` exports a dynamic batch dimension. ``batch=1`` exports a static single-row graph: with every
    shape known, constant folding removes nflows' shape arithmetic (about 400 of the graph's nodes), which halves the
    single-window latency. The flow is left in eval mode.
    """
    wrapper = _LogProb(flow).eval()  # the exporter restores the wrapper's mode afterwards: it must be eval too
    buf = io.BytesIO()
    example = torch.zeros(2 if batch is None else batch, features)
    dynamic = {"input": {0: "N"}, "log_prob": {0: "N"}} if batch is None else None
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # TracerWarnings from nflows' shape checks; parity is tested instead
        torch.onnx.export(
            wrapper,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["log_prob"],
            dynamic_axes=dynamic,
        )
    flow.eval()
    return buf.getvalue()


def _ort_session(onnx_bytes: bytes, threads: int) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 1:  # no busy-waiting worker threads between calls: this machine's cores are shared
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


class OnnxLogProb:
    """ONNX Runtime CPU scorer of an exported flow.

    Single rows go to the static batch-1 graph (``single_bytes``, when given) on one thread: lowest latency, no
    thread wake-ups. Other batches go to the dynamic graph, on ``threads`` intra-op threads (default 1: on this
    2-core machine, shared with the node's own work, a second thread measured slower, see
    bench/results/timeseries_core.md).
    """

    def __init__(self, onnx_bytes: bytes, threads: int = 1, single_bytes: bytes | None = None) -> None:
        self.session = _ort_session(onnx_bytes, threads)
        self.single = _ort_session(single_bytes, 1) if single_bytes else None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [self.session.get_outputs()[0].name]
        if self.single is not None:
            shape = self.single.get_inputs()[0].shape
            expected = [1, *self.session.get_inputs()[0].shape[1:]]
            if list(shape) != expected:
                raise ValueError(f"single-row ONNX graph has input shape {shape}, expected {expected}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        session = self.single if self.single is not None and x.shape[0] == 1 else self.session
        return session.run(self.output_names, {self.input_name: x})[0].astype(np.float64)
