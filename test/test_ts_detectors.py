"""Detectors: one interface, parity of the numpy scorers with scikit-learn, safe save/load, RealNVP specifics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors import DETECTOR_NAMES, detector_names, load_detector, make_detector

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
    s = det.decision_function(np.vstack([normal, broken]))
    assert s.shape == (200,) and np.all(np.isfinite(s))
    assert det.predict(normal).mean() <= 0.2
    det.save(tmp_path / name)
    loaded = load_detector(tmp_path / name)
    np.testing.assert_array_equal(loaded.decision_function(normal), det.decision_function(normal))
    assert loaded.threshold_ == det.threshold_ and loaded.params == det.params


def test_numpy_scorers_match_scikit_learn(data):
    from sklearn.covariance import EllipticEnvelope
    from sklearn.ensemble import IsolationForest
    from sklearn.svm import OneClassSVM

    x, normal, broken = data
    test = np.vstack([normal, broken, 3 * broken])
    ref = -IsolationForest(n_estimators=100, contamination=0.05, random_state=0).fit(x).score_samples(test)
    np.testing.assert_allclose(make_detector("iforest").fit(x).decision_function(test), ref, rtol=1e-12)
    ref = -OneClassSVM(kernel="rbf", gamma=0.1, nu=0.05).fit(x).decision_function(test)
    np.testing.assert_allclose(make_detector("ocsvm").fit(x).decision_function(test), ref, rtol=1e-9, atol=1e-12)
    ref = -EllipticEnvelope(contamination=0.05, random_state=0).fit(x).score_samples(test)
    np.testing.assert_allclose(make_detector("elliptic").fit(x).decision_function(test), ref, rtol=1e-9)


def test_realnvp_sees_a_broken_correlation_and_names_the_feature(data):
    x, normal, broken = data
    det = make_detector("realnvp", epochs=40, num_layers=4, hidden_features=32, backend="torch").fit(x)
    s_norm, s_broken = det.decision_function(normal), det.decision_function(broken)
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
    """Parity of the ONNX Runtime scorer (dynamic batch graph and static single-row graph) with nflows in torch."""
    pytest.importorskip("onnxruntime")
    from flow_anomaly_ros.flows.realnvp import OnnxLogProb

    x, normal, broken = data
    det = make_detector("realnvp", **SMALL["realnvp"]).fit(x)
    assert det.onnx_bytes and det.onnx_single
    batch = np.vstack([normal, broken, 5 * broken]).astype(np.float32)
    torch_lp = det.log_prob(batch, backend="torch")
    ort_lp = det.log_prob(batch, backend="onnxruntime")
    np.testing.assert_allclose(ort_lp, torch_lp, rtol=1e-4, atol=1e-3)
    for n in (1, 2, 7):  # batch 1 goes to the static graph
        np.testing.assert_allclose(det.log_prob(batch[:n], backend="onnxruntime"), torch_lp[:n], rtol=1e-4, atol=1e-3)
    singles = np.array([det.log_prob(batch[i : i + 1], backend="onnxruntime")[0] for i in range(0, 300, 10)])
    np.testing.assert_allclose(singles, torch_lp[0:300:10], rtol=1e-4, atol=1e-3)
    two_threads = OnnxLogProb(det.onnx_bytes, threads=2)(batch)  # the batch path on more threads: same numbers
    np.testing.assert_allclose(two_threads, ort_lp, rtol=1e-6, atol=1e-5)
    det.save(tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    assert loaded.onnx_bytes == det.onnx_bytes and loaded.onnx_single == det.onnx_single
    np.testing.assert_array_equal(loaded.log_prob(batch, backend="onnxruntime"), ort_lp)
    np.testing.assert_array_equal(loaded.log_prob(batch[:1], backend="onnxruntime"), singles[:1])


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
        det.decision_function(x[:, :5])
    with pytest.raises(RuntimeError, match="calibrate"):
        det.predict(x)
    det.calibrate(x)
    det.save(tmp_path / "ee")
    (tmp_path / "ee" / "weights.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFileError, match="checksum"):
        load_detector(tmp_path / "ee")
    with pytest.raises(ModelFileError, match="not found"):
        load_detector(tmp_path / "nothing")


# --- saved models: identical in a new process; damaged or mismatched files fail naming the problem ---------------
@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """Every detector fitted, calibrated and saved once (RealNVP with its default backend: ONNX Runtime if present)."""
    x, normal, broken = data
    root = tmp_path_factory.mktemp("saved")
    probe = np.vstack([normal, broken, 4 * broken])
    scores = {}
    for name in DETECTOR_NAMES:
        params = {**SMALL.get(name, {}), "backend": "auto"} if name == "realnvp" else SMALL.get(name, {})
        det = make_detector(name, **params).fit(x).calibrate(normal)
        det.save(root / name)
        scores[name] = (det.decision_function(probe), det.threshold_)
    np.save(root / "probe.npy", probe)
    return root, scores


def test_saved_models_give_identical_scores_in_a_new_process(saved):
    root, scores = saved
    code = (
        "import json, sys, numpy as np\n"
        "from flow_anomaly_ros.timeseries.detectors import detector_names, load_detector\n"
        "root = sys.argv[1]; probe = np.load(root + '/probe.npy'); out = {}\n"
        "for n in detector_names():\n"
        "    d = load_detector(f'{root}/{n}')\n"
        "    out[n] = [d.decision_function(probe).tolist(), d.threshold_, getattr(d, 'active_backend', '')]\n"
        "print(json.dumps(out))\n"
    )
    # a fresh interpreter with its default thread count (this process runs torch on one thread)
    res = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    there = json.loads(res.stdout.strip().splitlines()[-1])
    for name in DETECTOR_NAMES:
        here_scores, here_threshold = scores[name]
        assert np.array_equal(np.array(there[name][0]), here_scores), f"{name}: scores differ after reload"
        assert there[name][1] == here_threshold
    assert there["realnvp"][2] == "onnxruntime"  # the scorer the node uses was the one checked


def _copy(saved, name, tmp_path):
    return Path(shutil.copytree(saved[0] / name, tmp_path / name))


def _edit_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _rechecksum(path):
    """Make the manifest's checksum match the (replaced) weights: only the content checks are left to catch it."""
    from flow_anomaly_ros.model_store import sha256_file

    _edit_manifest(path, lambda m: m.update(weights_sha256=sha256_file(path / "weights.safetensors")))


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_damaged_model_files_fail_naming_the_problem(name, saved, tmp_path):
    p = _copy(saved, name, tmp_path)
    weights = p / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated (an interrupted copy)
    with pytest.raises(ModelFileError, match=r"weights\.safetensors do not match the manifest checksum.*truncated"):
        load_detector(p)
    _rechecksum(p)  # truncated AND a manifest that vouches for it: the safetensors reader must refuse
    with pytest.raises(ModelFileError, match=r"weights\.safetensors cannot be read"):
        load_detector(p)
    weights.write_bytes(good)
    _rechecksum(p)
    manifest = (p / "manifest.json").read_text()
    (p / "manifest.json").write_text(manifest[: len(manifest) // 2])  # truncated manifest
    with pytest.raises(ModelFileError, match=r"manifest is corrupt \(not valid JSON\): .*manifest\.json"):
        load_detector(p)
    (p / "manifest.json").unlink()
    with pytest.raises(ModelFileError, match="manifest missing"):
        load_detector(p)


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_mismatched_model_files_fail_naming_the_problem(name, saved, tmp_path):
    p = _copy(saved, name, tmp_path)
    _edit_manifest(p, lambda m: m["detector"].update(n_features=5))  # manifest edited to another input size
    with pytest.raises(ModelFileError, match="manifest says 5 features but the weights were saved for 6"):
        load_detector(p)
    p = _copy(saved, name, tmp_path / "kind")
    _edit_manifest(p, lambda m: m.update(kind="segmentation/deeplabv3"))
    with pytest.raises(ModelFileError, match=r"kind 'segmentation/deeplabv3', expected 'timeseries'"):
        load_detector(p)
    p = _copy(saved, name, tmp_path / "version")
    _edit_manifest(p, lambda m: m.update(format_version=99))
    with pytest.raises(ModelFileError, match="format_version 99"):
        load_detector(p)
    other = "iforest" if name != "iforest" else "elliptic"  # the weights of another detector under this manifest
    p = _copy(saved, name, tmp_path / "swap")
    shutil.copy(saved[0] / other / "weights.safetensors", p / "weights.safetensors")
    _rechecksum(p)
    with pytest.raises(ModelFileError, match=r"lacks tensor|do not match the architecture|do not fit"):
        load_detector(p)


def test_realnvp_architecture_and_onnx_mismatches_fail(saved, data, tmp_path):
    p = _copy(saved, "realnvp", tmp_path)
    _edit_manifest(p, lambda m: m["detector"]["params"].update(hidden_features=32))
    with pytest.raises(ModelFileError, match=r"do not match the architecture|do not fit the manifest.s architecture"):
        load_detector(p)
    _edit_manifest(p, lambda m: m["detector"]["params"].update(hidden_features=16, backend="quantum"))
    with pytest.raises(ModelFileError, match=r"invalid detector parameters.*backend .quantum."):
        load_detector(p)
    # a valid ONNX file of ANOTHER flow, with its checksum entered in the manifest: caught by the probe parity check
    pytest.importorskip("onnxruntime")
    import hashlib

    x, _, _ = data
    other = make_detector("realnvp", **{**SMALL["realnvp"], "seed": 1}).fit(x)
    p = _copy(saved, "realnvp", tmp_path / "onnx")
    (p / "realnvp.onnx").write_bytes(other.onnx_bytes)
    digest = hashlib.sha256(other.onnx_bytes).hexdigest()
    _edit_manifest(p, lambda m: m["extra_files"].update({"realnvp.onnx": digest}))
    with pytest.raises(ModelFileError, match=r"realnvp\.onnx does not compute the log-likelihood of the stored"):
        load_detector(p)
    p = _copy(saved, "realnvp", tmp_path / "single")  # the same for the single-row graph
    other_single = other.onnx_single
    (p / "realnvp_single.onnx").write_bytes(other_single)
    digest = hashlib.sha256(other_single).hexdigest()
    _edit_manifest(p, lambda m: m["extra_files"].update({"realnvp_single.onnx": digest}))
    with pytest.raises(ModelFileError, match=r"realnvp_single\.onnx does not compute the log-likelihood"):
        load_detector(p)
    (p / "realnvp.onnx").write_bytes(b"not onnx")
    _edit_manifest(p, lambda m: m["extra_files"].update({"realnvp.onnx": hashlib.sha256(b"not onnx").hexdigest()}))
    with pytest.raises(ModelFileError, match=r"realnvp\.onnx cannot be loaded by ONNX Runtime"):
        load_detector(p)


# --- contributions and threshold calibration -------------------------------------------------------------------
def test_contributions_shape_and_meaning(data):
    x, normal, broken = data
    det = make_detector("realnvp", epochs=25, num_layers=4, hidden_features=32, backend="torch").fit(x)
    rows = np.vstack([normal[:20], broken[:20]])
    c = det.contributions(rows)
    assert c.shape == (40, 6) and np.all(c >= 0)
    sums = c.sum(axis=1)
    assert np.all((np.abs(sums - 1) < 1e-9) | (sums == 0))  # shares of the score, or nothing to explain
    # a window whose redundant pair disagrees is blamed on that pair, not on the independent features
    assert np.mean(c[20:, :2].sum(axis=1)) > 0.6
    # occlusion meaning: setting the top feature to its clean median (0) lowers the score
    far = normal[:5].copy()
    far[:, 4] = 7.0
    cf = det.contributions(far)
    assert np.all(np.argmax(cf, axis=1) == 4)
    fixed = far.copy()
    fixed[:, 4] = 0.0
    assert np.all(det.decision_function(fixed) < det.decision_function(far))
    with pytest.raises(ValueError, match="expected 6 features"):
        det.contributions(rows[:, :3])


@pytest.mark.parametrize("name", ["iforest", "elliptic"])
def test_threshold_calibration_quantile_and_contamination(name, data):
    x, normal, _ = data
    det = make_detector(name).fit(x)
    clean = np.vstack([normal, x[:300]])
    scores = det.decision_function(clean)
    det.calibrate(clean, method="quantile", quantile=0.9)
    assert det.threshold_ == pytest.approx(np.quantile(scores, 0.9))
    assert abs(det.predict(clean).mean() - 0.1) <= 0.01
    assert det.calibration_ == {"method": "quantile", "quantile": 0.9, "n_windows": len(clean)}
    det.calibrate(clean, method="contamination")  # 1 - contamination (0.05, the paper's default)
    assert det.threshold_ == pytest.approx(np.quantile(scores, 0.95))
    assert abs(det.predict(clean).mean() - 0.05) <= 0.01
    assert make_detector(name, contamination=0.2).fit(x).calibrate(clean, method="contamination").predict(
        clean
    ).mean() == pytest.approx(0.2, abs=0.01)


def test_threshold_calibration_errors(data):
    x, normal, _ = data
    det = make_detector("ocsvm").fit(x)
    with pytest.raises(ValueError, match="no contamination parameter; use method='quantile'"):
        det.calibrate(normal, method="contamination")
    with pytest.raises(ValueError, match=r"threshold method 'mad' not one of"):
        det.calibrate(normal, method="mad")
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\)"):
        det.calibrate(normal, quantile=1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        make_detector("ocsvm").calibrate(normal)


def test_score_samples_is_a_deprecated_alias_of_decision_function(data):
    x, normal, _ = data
    det = make_detector("iforest").fit(x)
    with pytest.warns(DeprecationWarning, match="use decision_function"):
        old = det.score_samples(normal)
    np.testing.assert_array_equal(old, det.decision_function(normal))


class _DiagonalGaussian:
    """A real (if simple) detector registered from outside the package: squared z-score summed over features."""


@pytest.fixture
def registered_zscore():
    from flow_anomaly_ros.timeseries.detectors import Detector, register_detector
    from flow_anomaly_ros.timeseries.detectors import base as det_base

    class ZScoreDetector(Detector):
        name = "zscore_test"
        DEFAULTS = {"eps": 1e-9}  # noqa: RUF012

        def _fit(self, x, progress):
            self.mean_, self.std_ = x.mean(0), x.std(0) + float(self.params["eps"])

        def _score(self, x):
            return (((x - self.mean_) / self.std_) ** 2).sum(1)

        def _tensors(self):
            return {"mean": self.mean_, "std": self.std_}

        def _restore(self, tensors, state, path):
            self.mean_, self.std_ = tensors["mean"], tensors["std"]

    assert register_detector(ZScoreDetector) is ZScoreDetector
    yield ZScoreDetector
    det_base._REGISTRY.pop("zscore_test", None)


def test_register_detector_really_adds_one_everywhere_names_are_read(data, tmp_path, registered_zscore):
    import argparse

    from flow_anomaly_ros.timeseries import cli as ts_cli
    from flow_anomaly_ros.timeseries.detectors import register_detector

    x, normal, broken = data
    assert detector_names()[:5] == ("realnvp", "iforest", "ocsvm", "autoencoder", "elliptic")
    from flow_anomaly_ros.timeseries import detectors as det_pkg

    assert detector_names()[-1] == "zscore_test" and "zscore_test" in det_pkg.DETECTOR_NAMES  # read when asked
    det = make_detector("zscore_test").fit(x).calibrate(normal)
    assert det.decision_function(3 * broken).mean() > det.decision_function(normal).mean()
    det.save(tmp_path / "z")
    loaded = load_detector(tmp_path / "z")
    assert isinstance(loaded, registered_zscore)
    np.testing.assert_array_equal(loaded.decision_function(normal), det.decision_function(normal))
    # the CLI reads its choices from the registry when its parser is built
    parser = argparse.ArgumentParser()
    ts_cli.register(parser.add_subparsers(), "ts", "time series")
    args = parser.parse_args(["ts", "train", "--detector", "zscore_test", "--out", str(tmp_path / "m")])
    assert args.detector == "zscore_test"
    # a second class cannot take a registered name; a non-detector is refused
    other = type("Other", (registered_zscore,), {})
    with pytest.raises(ValueError, match="already registered"):
        register_detector(other)
    with pytest.raises(TypeError, match="Detector subclass"):
        register_detector(_DiagonalGaussian)
