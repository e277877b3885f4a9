"""RealNVP (the paper's flow): nflows RealNVP scored by negative log-likelihood, ONNX Runtime or numpy scorer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors.base import Detector, as_2d, register_detector


@register_detector
class RealNVPDetector(Detector):
    """nflows RealNVP scored by negative log-likelihood; ONNX Runtime scorer when available (``backend``)."""

    name = "realnvp"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "num_layers": 6,
        "hidden_features": 64,
        "num_blocks_per_layer": 2,
        "epochs": 60,
        "batch_size": 256,
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "noise_std": 0.05,
        "seed": 0,
        "backend": "auto",  # auto (onnxruntime if importable, else torch) | torch | onnxruntime
    }
    BACKENDS = ("auto", "torch", "onnxruntime")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["backend"] not in self.BACKENDS:
            raise ValueError(f"backend {self.params['backend']!r} not one of {list(self.BACKENDS)}")
        self.flow = None
        self.onnx_bytes: bytes | None = None  # dynamic batch graph
        self.onnx_single: bytes | None = None  # static batch-1 graph (single-window latency)
        self._ort = None

    def _build(self) -> Any:
        from flow_anomaly_ros.flows.realnvp import build_realnvp

        return build_realnvp(
            self.n_features_,
            hidden_features=int(self.params["hidden_features"]),
            num_layers=int(self.params["num_layers"]),
            num_blocks_per_layer=int(self.params["num_blocks_per_layer"]),
        )

    def _fit(self, x: np.ndarray, progress: bool) -> None:
        import torch

        from flow_anomaly_ros.flows.realnvp import export_log_prob_onnx, train_flow

        torch.manual_seed(int(self.params["seed"]))
        self.flow = self._build()
        bar = None
        callback: Callable[[int, float, float], None] | None = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=int(self.params["epochs"]), desc="realnvp", unit="epoch")

            def callback(epoch: int, train_nll: float, val_nll: float) -> None:
                bar.set_postfix(train_nll=f"{train_nll:.3f}", val_nll=f"{val_nll:.3f}")
                bar.update(1)

        try:
            self.fit_summary_ = train_flow(
                self.flow,
                x,
                epochs=int(self.params["epochs"]),
                batch_size=int(self.params["batch_size"]),
                learning_rate=float(self.params["learning_rate"]),
                weight_decay=float(self.params["weight_decay"]),
                noise_std=float(self.params["noise_std"]),
                seed=int(self.params["seed"]),
                progress=callback,
            )
        finally:
            if bar is not None:
                bar.close()
        self.onnx_bytes = export_log_prob_onnx(self.flow, self.n_features_)
        self.onnx_single = export_log_prob_onnx(self.flow, self.n_features_, batch=1)
        self._ort = None

    @property
    def active_backend(self) -> str:
        backend = self.params["backend"]
        if backend == "auto":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                return "torch"
            return "onnxruntime" if self.onnx_bytes else "torch"
        return backend

    def log_prob(self, x: np.ndarray, backend: str | None = None) -> np.ndarray:
        backend = backend or self.active_backend
        if backend == "onnxruntime":
            if self.onnx_bytes is None:
                raise RuntimeError("no ONNX export of this flow")
            if self._ort is None:
                from flow_anomaly_ros.flows.realnvp import OnnxLogProb

                self._ort = OnnxLogProb(self.onnx_bytes, single_bytes=self.onnx_single)
            return self._ort(x)
        from flow_anomaly_ros.flows.realnvp import log_prob_numpy

        return log_prob_numpy(self.flow, x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return -self.log_prob(x)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature share of each row's score: the score drop when the feature is set to its clean median (0).

        Occlusion attribution: for row ``x`` and feature ``i``, ``max(0, s(x) - s(x with x_i = 0))``, normalised to
        sum 1 (all zeros when no single feature explains the score). Features are normalised, so 0 is the median of
        clean training windows. Costs one batched scoring of ``d + 1`` rows per window, one window per call: a
        larger batch can take other kernels and change the last bits, and a row's attribution must not depend on
        which windows it was asked with (the node explains the windows one poll closes, offline one at a time).
        """
        x = as_2d(x, self.n_features_)
        n, d = x.shape
        rows = np.repeat(x[:, None, :], d + 1, axis=1)
        idx = np.arange(d)
        rows[:, idx + 1, idx] = 0.0
        s = np.stack([self.decision_function(window) for window in rows]) if n else np.zeros((0, d + 1))
        drop = np.maximum(s[:, :1] - s[:, 1:], 0.0)
        total = drop.sum(axis=1, keepdims=True)
        return np.divide(drop, total, out=np.zeros_like(drop), where=total > 0)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.flow.state_dict().items()}

    def _extra_files(self) -> dict[str, bytes]:
        files = {"realnvp.onnx": self.onnx_bytes} if self.onnx_bytes else {}
        if self.onnx_bytes and self.onnx_single:
            files["realnvp_single.onnx"] = self.onnx_single
        return files

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        import torch

        self.flow = self._build()
        expected = set(self.flow.state_dict())
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ModelFileError(
                f"RealNVP weights in {path} do not match the architecture in the manifest "
                f"(missing {missing[:3]}, unexpected {extra[:3]})"
            )
        try:
            self.flow.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        except RuntimeError as exc:
            raise ModelFileError(f"RealNVP weights in {path} do not fit the manifest's architecture: {exc}") from exc
        self.flow.eval()
        onnx_path = path / "realnvp.onnx"
        self.onnx_bytes = onnx_path.read_bytes() if onnx_path.is_file() else None
        single_path = path / "realnvp_single.onnx"
        self.onnx_single = single_path.read_bytes() if self.onnx_bytes and single_path.is_file() else None
        if self.onnx_bytes is not None and self.active_backend == "onnxruntime":
            self._check_onnx_matches_weights(onnx_path)

    def _check_onnx_matches_weights(self, onnx_path: Path) -> None:
        """The ONNX graphs must compute the log-likelihood of the stored weights (probe rows, 1e-3 abs).

        Checksums catch a damaged file; this catches a valid ONNX file of another model (e.g. copied in with its
        manifest entry), which would otherwise score silently with a different density.
        """
        from flow_anomaly_ros.flows.realnvp import log_prob_numpy

        probes = np.random.default_rng(12345).standard_normal((8, self.n_features_)).astype(np.float32)
        from flow_anomaly_ros.flows.realnvp import OnnxLogProb

        single_path = onnx_path.parent / "realnvp_single.onnx"
        try:
            self._ort = OnnxLogProb(self.onnx_bytes)
        except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
            raise ModelFileError(f"{onnx_path} cannot be loaded by ONNX Runtime: {exc}") from exc
        if self.onnx_single is not None:
            try:
                self._ort = OnnxLogProb(self.onnx_bytes, single_bytes=self.onnx_single)
            except Exception as exc:
                raise ModelFileError(f"{single_path} cannot be loaded by ONNX Runtime: {exc}") from exc
        ort_lp = self.log_prob(probes, backend="onnxruntime")
        ort_one = self.log_prob(probes[:1], backend="onnxruntime")
        torch_lp = log_prob_numpy(self.flow, probes)
        for got, want, name in (
            (ort_lp, torch_lp, onnx_path),
            (ort_one, torch_lp[:1], single_path),
        ):
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-3):
                raise ModelFileError(
                    f"{name} does not compute the log-likelihood of the stored weights (max difference "
                    f"{np.max(np.abs(got - want)) if got.shape == want.shape else 'shape'}): ONNX file from another "
                    "model?"
                )
