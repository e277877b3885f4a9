"""One-Class SVM baseline (RBF): fitted by scikit-learn, stored as support vectors, scored in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors.base import Detector, register_detector


@register_detector
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
