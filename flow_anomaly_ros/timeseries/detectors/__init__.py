"""Anomaly detectors with one interface: RealNVP (the paper's flow) and the paper's four baselines, one module each.

Defaults follow the paper (Section 5.1): Isolation Forest with 100 estimators and contamination 0.05; One-Class SVM
with an RBF kernel, gamma 0.1, nu 0.05; an autoencoder with two hidden layers, dropout, a bottleneck of 2, MSE loss
and 100 epochs; Elliptic Envelope with contamination 0.05; RealNVP (nflows) scored by negative log-likelihood. The
scikit-learn baselines are stored as their fitted arrays and scored by small numpy re-implementations that the tests
check against scikit-learn. The interface and the registry are in :mod:`.base`.

Example::

    det = make_detector("realnvp", epochs=30)
    det.fit(x_train).calibrate(x_val)
    flags = det.predict(x_test)
    det.save("models/ts_realnvp")
    same = load_detector("models/ts_realnvp")
"""

from __future__ import annotations

from typing import Any

# Importing a detector module registers it; this order (the paper's) is the order of detector_names().
# isort: off
from flow_anomaly_ros.timeseries.detectors.realnvp import RealNVPDetector
from flow_anomaly_ros.timeseries.detectors.iforest import IsolationForestDetector
from flow_anomaly_ros.timeseries.detectors.ocsvm import OneClassSVMDetector
from flow_anomaly_ros.timeseries.detectors.autoencoder import AutoencoderDetector
from flow_anomaly_ros.timeseries.detectors.elliptic import EllipticEnvelopeDetector

# isort: on
from flow_anomaly_ros.timeseries.detectors.base import (
    KIND_PREFIX,
    N_FEATURES_TENSOR,
    TENSOR_PREFIX,
    THRESHOLD_METHODS,
    Detector,
    as_2d,
    detector_from_loaded,
    detector_names,
    load_detector,
    make_detector,
    register_detector,
)

__all__ = [
    "KIND_PREFIX",
    "N_FEATURES_TENSOR",
    "TENSOR_PREFIX",
    "THRESHOLD_METHODS",
    "AutoencoderDetector",
    "Detector",
    "EllipticEnvelopeDetector",
    "IsolationForestDetector",
    "OneClassSVMDetector",
    "RealNVPDetector",
    "as_2d",
    "detector_from_loaded",
    "detector_names",
    "load_detector",
    "make_detector",
    "register_detector",
]


def __getattr__(name: str) -> Any:
    """``DETECTOR_NAMES`` (kept for existing callers) is read from the registry, so it includes later registrations."""
    if name == "DETECTOR_NAMES":
        return detector_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
