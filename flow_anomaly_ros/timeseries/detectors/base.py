"""The detector interface, the registry of detector names, and loading a saved detector.

Every detector has ``fit(X)`` on a 2-D float array (n_windows, n_features), ``decision_function(X)`` (higher = more
anomalous, PyOD's convention; ``score_samples`` is its deprecated alias for one release), ``calibrate(X_clean)``
which sets ``threshold_`` from clean validation scores (a quantile, or ``1 - contamination``), ``predict(X)`` (bool),
``save(path)`` and :func:`load_detector`. Models are stored with :mod:`flow_anomaly_ros.model_store` (safetensors +
JSON manifest, never pickle).

The registry is the only list of detector names: :func:`register_detector` (a class decorator) adds one, and
:func:`detector_names`, :func:`make_detector`, :func:`load_detector` and the CLI choices all read it. A new detector
is one module in this package that defines a :class:`Detector` subclass decorated with ``@register_detector`` and
is imported by ``detectors/__init__.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError, load_model_dir, read_manifest, save_model_dir

KIND_PREFIX = "timeseries"
THRESHOLD_METHODS = ("quantile", "contamination")
TENSOR_PREFIX = "detector."
# Feature count stored among the checksummed weights too: a manifest edited to another size fails clearly on load.
N_FEATURES_TENSOR = "meta.n_features"


def as_2d(x: np.ndarray, dim: int | None = None) -> np.ndarray:
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
        x = as_2d(x)
        if len(x) < 20:
            raise ValueError(f"need at least 20 training windows, got {len(x)}")
        self.n_features_ = x.shape[1]
        self._fit(x, progress)
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score per row, higher = more anomalous (PyOD's convention)."""
        self._check_fitted()
        x = as_2d(x, self.n_features_)
        if len(x) == 0:
            return np.empty(0)
        return np.asarray(self._score(x), dtype=np.float64)

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """Deprecated alias of :meth:`decision_function` (same values); removed in the next release."""
        warnings.warn(
            "Detector.score_samples is deprecated; use decision_function (same scores, higher = more anomalous)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.decision_function(x)

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
        scores = self.decision_function(x_clean)
        self.threshold_ = float(np.quantile(scores, quantile))
        self.calibration_ = {"method": method, "quantile": quantile, "n_windows": len(scores)}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.threshold_ is None:
            raise RuntimeError(f"detector {self.name!r} has no threshold: call calibrate() first")
        return self.decision_function(x) > self.threshold_

    def save(
        self,
        path: str | Path,
        extra_manifest: dict[str, Any] | None = None,
        extra_tensors: dict[str, np.ndarray] | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        self._check_fitted()
        tensors = {TENSOR_PREFIX + k: v for k, v in self._tensors().items()}
        tensors[N_FEATURES_TENSOR] = np.array([self.n_features_], dtype=np.int64)
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


_REGISTRY: dict[str, type[Detector]] = {}  # name -> class, in registration order


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` known by its ``name`` to make_detector, load_detector and the CLI."""
    if not (isinstance(cls, type) and issubclass(cls, Detector)) or not cls.name:
        raise TypeError(f"register_detector needs a Detector subclass with a name, got {cls!r}")
    known = _REGISTRY.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"detector name {cls.name!r} is already registered by {known.__module__}.{known.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def detector_names() -> tuple[str, ...]:
    """Registered detector names, in registration order (the built-in five first)."""
    return tuple(_REGISTRY)


def make_detector(name: str, **params: Any) -> Detector:
    """Build an unfitted detector by a registered name (see :func:`detector_names`)."""
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
    try:
        det.n_features_ = int(info["n_features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model at {path}: manifest has no valid detector.n_features ({exc!r})") from exc
    if N_FEATURES_TENSOR in tensors and int(np.asarray(tensors[N_FEATURES_TENSOR]).reshape(-1)[0]) != det.n_features_:
        raise ModelFileError(
            f"model at {path}: manifest says {det.n_features_} features but the weights were saved for "
            f"{int(np.asarray(tensors[N_FEATURES_TENSOR]).reshape(-1)[0])} (manifest edited or from another model)"
        )
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
