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

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError, load_model_dir, read_manifest, save_model_dir

KIND_PREFIX = "timeseries"
DETECTOR_NAMES = ("realnvp", "iforest", "ocsvm", "autoencoder", "elliptic")
THRESHOLD_METHODS = ("quantile", "contamination")
TENSOR_PREFIX = "detector."
# Feature count stored among the checksummed weights too: a manifest edited to another size fails clearly on load.
N_FEATURES_TENSOR = "meta.n_features"


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


# ------------------------------------------------------------------------------------------------------------
def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n) of Liu et al. (2008): mean path length of an unsuccessful BST search among n points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class IsolationForestDetector(Detector):
    """Isolation Forest (Liu et al. 2008) via scikit-learn; stored as flat tree arrays, scored in numpy.

    Score = ``2 ** (-E[h(x)] / c(max_samples))`` (scikit-learn's ``-score_samples``), higher = more anomalous.
    """

    name = "iforest"
    DEFAULTS: ClassVar[dict[str, Any]] = {"n_estimators": 100, "contamination": 0.05, "max_samples": "auto", "seed": 0}

    def _fit(self, x: np.ndarray, progress: bool) -> None:
        from sklearn.ensemble import IsolationForest

        est = IsolationForest(
            n_estimators=int(self.params["n_estimators"]),
            contamination=float(self.params["contamination"]),
            max_samples=self.params["max_samples"],
            random_state=int(self.params["seed"]),
        ).fit(x)
        lefts, rights, feats, thrs, values, roots = [], [], [], [], [], []
        offset = 0
        for tree, features in zip(est.estimators_, est.estimators_features_):
            t = tree.tree_
            n = t.node_count
            left = t.children_left.astype(np.int64)
            right = t.children_right.astype(np.int64)
            depth = np.zeros(n)
            for i in range(n):  # parents precede children in scikit-learn's node order
                if left[i] >= 0:
                    depth[left[i]] = depth[right[i]] = depth[i] + 1
            leaf = left < 0
            lefts.append(np.where(leaf, np.arange(n), left) + offset)
            rights.append(np.where(leaf, np.arange(n), right) + offset)
            feats.append(np.where(leaf, 0, np.asarray(features)[np.maximum(t.feature, 0)]))
            thrs.append(t.threshold)
            values.append(np.where(leaf, depth + _average_path_length(t.n_node_samples), 0.0))
            roots.append(offset)
            offset += n
        self.left, self.right = np.concatenate(lefts), np.concatenate(rights)
        self.feature, self.threshold = np.concatenate(feats), np.concatenate(thrs)
        self.leaf_value, self.roots = np.concatenate(values), np.array(roots)
        self.denominator = float(len(roots) * _average_path_length(np.array([est.max_samples_]))[0])

    def _score(self, x: np.ndarray) -> np.ndarray:
        x32 = x.astype(np.float32).astype(np.float64)  # scikit-learn's trees compare float32 inputs
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        while True:
            nxt = np.where(x32[rows, self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
            if np.array_equal(nxt, node):
                break
            node = nxt
        depth = self.leaf_value[node].sum(axis=1)
        return 2.0 ** (-depth / self.denominator)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            "left": self.left,
            "right": self.right,
            "feature": self.feature,
            "threshold": self.threshold,
            "leaf_value": self.leaf_value,
            "roots": self.roots,
        }

    def _state(self) -> dict[str, Any]:
        return {"denominator": self.denominator}

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        for k in ("left", "right", "feature", "roots"):
            setattr(self, k, np.asarray(tensors[k], dtype=np.int64))
        self.threshold = np.asarray(tensors["threshold"], np.float64)
        self.leaf_value = np.asarray(tensors["leaf_value"], np.float64)
        self.denominator = float(state["denominator"])
        n = len(self.left)
        if not (len(self.right) == len(self.feature) == len(self.threshold) == n) or (
            n and (self.left.max() >= n or self.right.max() >= n or self.feature.max() >= self.n_features_)
        ):
            raise ModelFileError(f"Isolation Forest arrays in {path} are inconsistent")


class OneClassSVMDetector(Detector):
    """One-Class SVM (Schölkopf et al. 2001), RBF kernel; stored as support vectors, scored in numpy.

    Score = ``-decision_function`` (positive outside the learned support). Fitting is O(n²): at most
    ``max_train_samples`` windows (seeded subsample) are used.
    """

    name = "ocsvm"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "kernel": "rbf",
        "gamma": 0.1,
        "nu": 0.05,
        "max_train_samples": 4000,
        "seed": 0,
    }

    def _fit(self, x: np.ndarray, progress: bool) -> None:
        from sklearn.svm import OneClassSVM

        if self.params["kernel"] != "rbf":
            raise ValueError("only the RBF kernel is supported (the paper's choice)")
        cap = int(self.params["max_train_samples"])
        if len(x) > cap:
            x = x[np.sort(np.random.default_rng(int(self.params["seed"])).choice(len(x), cap, replace=False))]
        est = OneClassSVM(
            kernel="rbf", gamma=float(self.params["gamma"]), nu=float(self.params["nu"]), cache_size=1000
        ).fit(x)
        self.sv = np.asarray(est.support_vectors_, np.float64)
        self.dual = np.asarray(est.dual_coef_[0], np.float64)
        self.intercept = float(est.intercept_[0])
        self.fit_summary_ = {"n_train": len(x), "n_support": len(self.sv)}

    def _score(self, x: np.ndarray) -> np.ndarray:
        gamma = float(self.params["gamma"])
        d2 = (x * x).sum(1)[:, None] + (self.sv * self.sv).sum(1)[None, :] - 2.0 * x @ self.sv.T
        return -(np.exp(-gamma * np.maximum(d2, 0.0)) @ self.dual + self.intercept)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"support_vectors": self.sv, "dual_coef": self.dual, "intercept": np.array([self.intercept])}

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        self.sv = np.asarray(tensors["support_vectors"], np.float64)
        self.dual = np.asarray(tensors["dual_coef"], np.float64)
        self.intercept = float(np.asarray(tensors["intercept"])[0])
        if self.sv.ndim != 2 or self.sv.shape[1] != self.n_features_ or len(self.dual) != len(self.sv):
            raise ModelFileError(f"One-Class SVM arrays in {path} are inconsistent")


class EllipticEnvelopeDetector(Detector):
    """Elliptic Envelope (robust covariance, MCD); score = squared Mahalanobis distance to the robust centre."""

    name = "elliptic"
    DEFAULTS: ClassVar[dict[str, Any]] = {"contamination": 0.05, "seed": 0}

    def _fit(self, x: np.ndarray, progress: bool) -> None:
        import warnings

        from sklearn.covariance import EllipticEnvelope

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "covariance matrix is not full rank" on flat features
            warnings.simplefilter("ignore", UserWarning)
            est = EllipticEnvelope(
                contamination=float(self.params["contamination"]), random_state=int(self.params["seed"])
            ).fit(x)
        self.location = np.asarray(est.location_, np.float64)
        self.precision = np.asarray(est.get_precision(), np.float64)

    def _score(self, x: np.ndarray) -> np.ndarray:
        d = x - self.location
        return np.einsum("ij,jk,ik->i", d, self.precision, d)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"location": self.location, "precision": self.precision}

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        self.location = np.asarray(tensors["location"], np.float64)
        self.precision = np.asarray(tensors["precision"], np.float64)
        if self.location.shape != (self.n_features_,) or self.precision.shape != (self.n_features_,) * 2:
            raise ModelFileError(f"Elliptic Envelope arrays in {path} are inconsistent")


class AutoencoderDetector(Detector):
    """Dense autoencoder (the paper: two hidden layers with dropout, bottleneck 2, MSE loss, 100 epochs).

    Encoder ``d -> hidden[0] -> hidden[1] -> bottleneck``, mirrored decoder, ReLU, dropout after each hidden layer;
    score = mean squared reconstruction error of the window's normalised features.
    """

    name = "autoencoder"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "hidden": [32, 16],
        "bottleneck": 2,
        "dropout": 0.1,
        "epochs": 100,
        "batch_size": 256,
        "learning_rate": 1e-3,
        "seed": 0,
    }

    def _build(self) -> Any:
        import torch

        h = [int(v) for v in self.params["hidden"]]
        p = float(self.params["dropout"])
        dims = [self.n_features_, *h]
        enc: list[torch.nn.Module] = []
        for a, b in itertools.pairwise(dims):
            enc += [torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Dropout(p)]
        enc.append(torch.nn.Linear(dims[-1], int(self.params["bottleneck"])))
        dec: list[torch.nn.Module] = []
        back = [int(self.params["bottleneck"]), *reversed(h)]
        for a, b in itertools.pairwise(back):
            dec += [torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Dropout(p)]
        dec.append(torch.nn.Linear(back[-1], self.n_features_))
        return torch.nn.Sequential(*enc, *dec)

    def _fit(self, x: np.ndarray, progress: bool) -> None:
        import torch

        torch.manual_seed(int(self.params["seed"]))
        gen = torch.Generator().manual_seed(int(self.params["seed"]))
        self.net = self._build()
        opt = torch.optim.Adam(self.net.parameters(), lr=float(self.params["learning_rate"]))
        xt = torch.from_numpy(x.astype(np.float32))
        bs = int(self.params["batch_size"])
        epochs = range(int(self.params["epochs"]))
        if progress:
            from tqdm import tqdm

            epochs = tqdm(epochs, desc="autoencoder", unit="epoch")
        loss = torch.tensor(float("nan"))
        for _ in epochs:
            self.net.train()
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(perm), bs):
                xb = xt[perm[i : i + bs]]
                loss = torch.nn.functional.mse_loss(self.net(xb), xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.net.eval()
        self.fit_summary_ = {"final_batch_mse": float(loss.detach())}

    def _score(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            xt = torch.from_numpy(x.astype(np.float32))
            return ((self.net(xt) - xt) ** 2).mean(dim=1).double().numpy()

    def _tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        import torch

        self.net = self._build()
        try:
            self.net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        except RuntimeError as exc:
            raise ModelFileError(
                f"autoencoder weights in {path} do not fit the manifest's architecture: {exc}"
            ) from exc
        self.net.eval()


# ------------------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        RealNVPDetector,
        IsolationForestDetector,
        OneClassSVMDetector,
        AutoencoderDetector,
        EllipticEnvelopeDetector,
    )
}


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
