"""Elliptic Envelope baseline: a robust covariance fitted by scikit-learn, scored as a Mahalanobis distance in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors.base import Detector, register_detector


@register_detector
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
