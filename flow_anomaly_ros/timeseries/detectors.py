"""Anomaly detectors with one interface: RealNVP (the paper's flow) and the paper's four baselines.

Every detector has ``fit(X)`` on a 2-D float array (n_windows, n_features), ``score_samples(X)`` (higher = more
anomalous), ``calibrate(X_clean)`` which sets ``threshold_`` from clean validation scores (a quantile, or
``1 - contamination``), ``predict(X)`` (bool), ``save(path)`` and the module function :func:`load_detector`.
Models are stored with :mod:`flow_anomaly_ros.model_store` (safetensors + JSON manifest, never pickle): the
scikit-learn baselines are stored as their fitted arrays and scored by small numpy re-implementations that the
tests check against scikit-learn.

Defaults follow the paper (Section 5.1): Isolation Forest with 100 estimators and contamination 0.05; One-Class SVM
with an RBF kernel, gamma 0.1, nu 0.05; an autoencoder with two hidden layers, dropout, a bottleneck of 2, MSE loss
and 100 epochs; Elliptic Envelope with contamination 0.05; RealNVP (nflows) scored by negative log-likelihood.

Example::

    det = make_detector("realnvp", epochs=30)
    det.fit(x_train).calibrate(x_val)
    flags = det.predict(x_test)
    det.save("models/ts_realnvp")
    same = load_detector("models/ts_realnvp")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError, load_model_dir, read_manifest, save_model_dir

KIND_PREFIX = "timeseries"
DETECTOR_NAMES = ("realnvp", "iforest", "ocsvm", "autoencoder", "elliptic")
THRESHOLD_METHODS = ("quantile", "contamination")
TENSOR_PREFIX = "detector."


def _as_2d(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (n_samples, n_features), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"expected {dim} features, got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("input contains NaN or Inf")
    return x


class Detector:
    """Common interface. Subclasses set ``name`` and ``DEFAULTS`` and implement _fit/_score/_tensors/_restore."""

    name: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for detector {self.name!r}; valid: {sorted(self.DEFAULTS)}"
            )
        self.params: dict[str, Any] = {**self.DEFAULTS, **params}
        self.n_features_: int | None = None
        self.threshold_: float | None = None
        self.calibration_: dict[str, Any] = {}
        self.fit_summary_: dict[str, Any] = {}

    # --- interface -------------------------------------------------------------------------------------------
    def fit(self, x: np.ndarray, progress: bool = False) -> Detector:
        x = _as_2d(x)
        if len(x) < 20:
            raise ValueError(f"need at least 20 training windows, got {len(x)}")
        self.n_features_ = x.shape[1]
        self._fit(x, progress)
        return self

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score per row, higher = more anomalous."""
        self._check_fitted()
        x = _as_2d(x, self.n_features_)
        if len(x) == 0:
            return np.empty(0)
        return np.asarray(self._score(x), dtype=np.float64)

    def calibrate(self, x_clean: np.ndarray, method: str = "quantile", quantile: float = 0.99) -> Detector:
        """Set ``threshold_`` from clean validation windows (``quantile``, or ``1 - contamination`` of the scores)."""
        if method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold method {method!r} not one of {list(THRESHOLD_METHODS)}")
        if method == "contamination":
            if "contamination" not in self.params:
                raise ValueError(f"detector {self.name!r} has no contamination parameter; use method='quantile'")
            quantile = 1.0 - float(self.params["contamination"])
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        scores = self.score_samples(x_clean)
        self.threshold_ = float(np.quantile(scores, quantile))
        self.calibration_ = {"method": method, "quantile": quantile, "n_windows": len(scores)}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.threshold_ is None:
            raise RuntimeError(f"detector {self.name!r} has no threshold: call calibrate() first")
        return self.score_samples(x) > self.threshold_

    def save(
        self,
        path: str | Path,
        extra_manifest: dict[str, Any] | None = None,
        extra_tensors: dict[str, np.ndarray] | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        self._check_fitted()
        tensors = {TENSOR_PREFIX + k: v for k, v in self._tensors().items()}
        tensors.update(extra_tensors or {})
        files = dict(self._extra_files())
        files.update(extra_files or {})
        manifest = dict(extra_manifest or {})
        manifest["detector"] = {
            "name": self.name,
            "params": self.params,
            "n_features": self.n_features_,
            "threshold": self.threshold_,
            "calibration": self.calibration_,
            "fit_summary": self.fit_summary_,
            "state": self._state(),
        }
        return save_model_dir(path, f"{KIND_PREFIX}/{self.name}", tensors, manifest, extra_files=files)

    # --- subclass hooks ----------------------------------------------------------------------------------------
    def _fit(self, x: np.ndarray, progress: bool) -> None:
        raise NotImplementedError

    def _score(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    def _extra_files(self) -> dict[str, bytes]:
        return {}

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if self.n_features_ is None:
            raise RuntimeError(f"detector {self.name!r} is not fitted")


# ------------------------------------------------------------------------------------------------------------
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
        self.onnx_bytes: bytes | None = None
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

                self._ort = OnnxLogProb(self.onnx_bytes)
            return self._ort(x)
        from flow_anomaly_ros.flows.realnvp import log_prob_numpy

        return log_prob_numpy(self.flow, x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return -self.log_prob(x)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature share of each row's score: the score drop when the feature is set to its clean median (0).

        Occlusion attribution: for row ``x`` and feature ``i``, ``max(0, s(x) - s(x with x_i = 0))``, normalised to
        sum 1 (all zeros when no single feature explains the score). Features are normalised, so 0 is the median of
        clean training windows. Costs one batched scoring of ``d + 1`` rows per window.
        """
        x = _as_2d(x, self.n_features_)
        n, d = x.shape
        rows = np.repeat(x[:, None, :], d + 1, axis=1)
        idx = np.arange(d)
        rows[:, idx + 1, idx] = 0.0
        s = self.score_samples(rows.reshape(-1, d)).reshape(n, d + 1)
        drop = np.maximum(s[:, :1] - s[:, 1:], 0.0)
        total = drop.sum(axis=1, keepdims=True)
        return np.divide(drop, total, out=np.zeros_like(drop), where=total > 0)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.flow.state_dict().items()}

    def _extra_files(self) -> dict[str, bytes]:
        return {"realnvp.onnx": self.onnx_bytes} if self.onnx_bytes else {}

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


# ------------------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Detector]] = {"realnvp": RealNVPDetector}


def register_detector(cls: type[Detector]) -> type[Detector]:
    _REGISTRY[cls.name] = cls
    return cls


def make_detector(name: str, **params: Any) -> Detector:
    """Build an unfitted detector by name (``realnvp``, ``iforest``, ``ocsvm``, ``autoencoder``, ``elliptic``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; valid: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**params)


def detector_from_loaded(manifest: dict[str, Any], tensors: dict[str, np.ndarray], path: Path) -> Detector:
    """Rebuild a detector from a loaded model directory (manifest + tensors)."""
    info = manifest.get("detector")
    if not isinstance(info, dict) or info.get("name") not in _REGISTRY:
        raise ModelFileError(f"model at {path} has no valid 'detector' section (known: {sorted(_REGISTRY)})")
    try:
        det = _REGISTRY[info["name"]](**(info.get("params") or {}))
    except ValueError as exc:
        raise ModelFileError(f"model at {path}: invalid detector parameters: {exc}") from exc
    det.n_features_ = int(info["n_features"])
    det.threshold_ = None if info.get("threshold") is None else float(info["threshold"])
    det.calibration_ = dict(info.get("calibration") or {})
    det.fit_summary_ = dict(info.get("fit_summary") or {})
    own = {k[len(TENSOR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(TENSOR_PREFIX)}
    try:
        det._restore(own, dict(info.get("state") or {}), Path(path))
    except KeyError as exc:
        raise ModelFileError(f"model at {path} lacks tensor {exc}") from exc
    return det


def load_detector(path: str | Path) -> Detector:
    """Load a detector saved with ``Detector.save`` (or a full time-series model directory)."""
    path = Path(path)
    read_manifest(path, expected_kind=KIND_PREFIX)
    manifest, tensors = load_model_dir(path, expected_kind=KIND_PREFIX)
    return detector_from_loaded(manifest, tensors, path)
