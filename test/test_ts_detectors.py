"""Detectors: one interface, parity of the numpy scorers with scikit-learn, safe save/load, RealNVP specifics."""

from __future__ import annotations

import numpy as np
import pytest

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors import DETECTOR_NAMES, load_detector, make_detector

SMALL = {
    "realnvp": {"epochs": 3, "num_layers": 2, "hidden_features": 16, "num_blocks_per_layer": 1, "backend": "torch"},
    "autoencoder": {"epochs": 3},
}


@pytest.fixture(scope="module")
def data():
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6))
    x[:, 1] = x[:, 0] + 0.1 * rng.standard_normal(400)  # a redundant pair, as IMU vs CAN yaw rate
    normal = rng.standard_normal((100, 6))
    normal[:, 1] = normal[:, 0] + 0.1 * rng.standard_normal(100)
    broken = normal.copy()
    broken[:, 1] = -broken[:, 0]  # consistency violated, marginals unchanged
    return x, normal, broken


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_every_detector_fits_scores_calibrates_saves_and_loads(name, data, tmp_path):
    x, normal, broken = data
    det = make_detector(name, **SMALL.get(name, {})).fit(x)
    det.calibrate(normal, quantile=0.9)
    s = det.score_samples(np.vstack([normal, broken]))
    assert s.shape == (200,) and np.all(np.isfinite(s))
    assert det.predict(normal).mean() <= 0.2
    det.save(tmp_path / name)
    loaded = load_detector(tmp_path / name)
    np.testing.assert_array_equal(loaded.score_samples(normal), det.score_samples(normal))
    assert loaded.threshold_ == det.threshold_ and loaded.params == det.params


def test_numpy_scorers_match_scikit_learn(data):
    from sklearn.covariance import EllipticEnvelope
    from sklearn.ensemble import IsolationForest
    from sklearn.svm import OneClassSVM

    x, normal, broken = data
    test = np.vstack([normal, broken, 3 * broken])
    ref = -IsolationForest(n_estimators=100, contamination=0.05, random_state=0).fit(x).score_samples(test)
    np.testing.assert_allclose(make_detector("iforest").fit(x).score_samples(test), ref, rtol=1e-12)
    ref = -OneClassSVM(kernel="rbf", gamma=0.1, nu=0.05).fit(x).decision_function(test)
    np.testing.assert_allclose(make_detector("ocsvm").fit(x).score_samples(test), ref, rtol=1e-9, atol=1e-12)
    ref = -EllipticEnvelope(contamination=0.05, random_state=0).fit(x).score_samples(test)
    np.testing.assert_allclose(make_detector("elliptic").fit(x).score_samples(test), ref, rtol=1e-9)


def test_realnvp_sees_a_broken_correlation_and_names_the_feature(data):
    x, normal, broken = data
    det = make_detector("realnvp", epochs=40, num_layers=4, hidden_features=32, backend="torch").fit(x)
    s_norm, s_broken = det.score_samples(normal), det.score_samples(broken)
    assert np.median(s_broken) > np.quantile(s_norm, 0.95)
    row = normal[:1].copy()
    row[0, 3] = 8.0  # one feature far out
    c = det.contributions(row)[0]
    assert c.shape == (6,) and np.argmax(c) == 3 and abs(c.sum() - 1.0) < 1e-9


def test_realnvp_likelihood_is_not_capped(data):
    """nflows' affine coupling alone caps log p at log N(0; I) = -0.919 d; BatchNorm between layers removes it."""
    x, _, _ = data
    narrow = x * 0.05  # a density much higher than the standard normal's peak
    det = make_detector("realnvp", epochs=30, num_layers=2, hidden_features=16, backend="torch").fit(narrow)
    assert np.mean(det.log_prob(narrow)) > -0.919 * x.shape[1] + 5


def test_onnx_runtime_scores_match_torch(data, tmp_path):
    pytest.importorskip("onnxruntime")
    x, normal, broken = data
    det = make_detector("realnvp", **SMALL["realnvp"]).fit(x)
    batch = np.vstack([normal, broken]).astype(np.float32)
    torch_lp = det.log_prob(batch, backend="torch")
    ort_lp = det.log_prob(batch, backend="onnxruntime")
    np.testing.assert_allclose(ort_lp, torch_lp, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(det.log_prob(batch[:1], backend="onnxruntime"), torch_lp[:1], rtol=1e-4, atol=1e-3)
    det.save(tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    assert loaded.onnx_bytes == det.onnx_bytes
    np.testing.assert_array_equal(loaded.log_prob(batch, backend="onnxruntime"), ort_lp)


def test_clear_errors(data, tmp_path):
    x, _, _ = data
    with pytest.raises(ValueError, match=r"unknown detector 'lof'.*valid"):
        make_detector("lof")
    with pytest.raises(ValueError, match=r"unknown parameter.*n_trees.*valid"):
        make_detector("iforest", n_trees=5)
    with pytest.raises(ValueError, match="NaN"):
        make_detector("iforest").fit(np.full((30, 2), np.nan))
    det = make_detector("elliptic").fit(x)
    with pytest.raises(ValueError, match="expected 6 features, got 5"):
        det.score_samples(x[:, :5])
    with pytest.raises(RuntimeError, match="calibrate"):
        det.predict(x)
    det.calibrate(x)
    det.save(tmp_path / "ee")
    (tmp_path / "ee" / "weights.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFileError, match="checksum"):
        load_detector(tmp_path / "ee")
    with pytest.raises(ModelFileError, match="not found"):
        load_detector(tmp_path / "nothing")
