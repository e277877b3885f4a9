"""The stream registry (flow_anomaly_ros.streams): IMU and CAN moved into it without changing a single feature or
score, and GNSS added through it as one module.

The IMU/CAN pin: a small real bag written by the demo recorder (KITTI IMU, DBC-generated CAN with injected attacks,
GPS, camera), read back and featurised with the shipped IMU + CAN config, then scored by an elliptic-envelope model
fitted on its first windows. The digests were computed with the code before the registry existed (commit
d831166: ``bag_recording`` reading IMU/CAN with its own loops, ``EVENT_DTYPE`` without the ``values`` column); the
registry's code path must give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from flow_anomaly_ros import streams
from flow_anomaly_ros.streams import gnss

IMU, CAN, GPS = "/imu/data", "/from_can_bus", "/gps/fix"
# captured before the registry (see the module docstring): 180 windows, 160 OK, 77 features
PINNED_FEATURES = "ef1eb9a01a2ed5039d439826a7b8328d7b213fed6093f3834757d9c7fbdb54be"
PINNED_STATUS = "ac73aa8869d3e5aa9d73c0d97c1416aa40c4dc1b90e9f34a2cadf4caedc98d0e"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_bag(tmp_path_factory):
    from flow_anomaly_ros.demo.config import DemoConfig
    from flow_anomaly_ros.demo.recording import make_demo_bag

    bag = tmp_path_factory.mktemp("streams") / "bag"
    cfg = DemoConfig.quick().with_overrides(bag_duration_s=18.0, camera_hz=0.5, camera_height=32, camera_width=64)
    make_demo_bag(bag, cfg)
    return bag


def test_imu_and_can_features_and_scores_are_bit_identical_to_before_the_registry(demo_bag):
    from flow_anomaly_ros.data.bag_recording import recording_from_bag
    from flow_anomaly_ros.timeseries.experiment import DatasetFeatures, fit_model
    from flow_anomaly_ros.timeseries.pipeline import featurize_recording, score_recording, stack_features
    from flow_anomaly_ros.timeseries.signals import default_config

    config, doc = default_config()
    assert config.streams == ["imu", "can"]
    rec = recording_from_bag(demo_bag, IMU, CAN)
    windows = featurize_recording(config, rec)
    x, _ = stack_features(windows)
    assert (len(windows), x.shape) == (180, (160, 77))
    assert _digest(x) == PINNED_FEATURES
    assert _digest(np.array([w.status for w in windows], np.int64)) == PINNED_STATUS
    model = fit_model(config, DatasetFeatures(x[:100], x[100:], []), "elliptic", doc, {}, threads=1)
    scores = np.array([r.score for r in score_recording(model, rec)])
    # The features are pinned bit for bit above; the scores follow from them: the streaming path equals the model
    # applied to those features (a pinned score digest would pin the CPU too: BLAS picks kernels by CPU model).
    ok = np.isfinite(scores)
    assert ok.sum() == len(x)
    direct = model.detector.decision_function(model.normaliser.transform(x))
    assert np.array_equal(scores[ok], direct)
    # the GNSS rows of the same bag change nothing for a model that does not read GNSS
    with_gnss = recording_from_bag(demo_bag, IMU, CAN, {"gnss": GPS})
    assert (with_gnss.events["kind"] == gnss.KIND_GNSS).sum() == 18
    x2, _ = stack_features(featurize_recording(config, with_gnss))
    assert _digest(x2) == PINNED_FEATURES


def test_registry_lists_the_three_streams_with_their_types_and_columns():
    names = [(s.name, s.kind, s.msgtype) for s in streams.all()]
    assert names[:3] == [
        ("imu", 0, "sensor_msgs/msg/Imu"),
        ("can", 1, "can_msgs/msg/Frame"),
        ("gnss", 2, "sensor_msgs/msg/NavSatFix"),
    ]
    assert streams.get("gnss").fields == gnss.FIELDS
    assert streams.by_kind(2) is streams.get("gnss")
    with pytest.raises(KeyError, match="registered: can, gnss, imu"):
        streams.get("odom")
    clash = streams.StreamKind("gnss2", 2, "x/msg/Y", "x.msg", "Y", "y")
    with pytest.raises(ValueError, match="clashes with registered 'gnss'"):
        streams.register_stream(clash)
    assert streams.get("gnss").ros_type().__name__ == "NavSatFix"  # lazily, from sensor_msgs


def _fix(lat: float, lon: float, alt: float = 100.0, status: float = 0.0, var: float = 2.25) -> np.ndarray:
    return np.array([lat, lon, alt, status, 1.0, 2.0, var, var, 4 * var])


def test_gnss_columns_from_consecutive_fixes():
    from flow_anomaly_ros.data.kitti import local_to_geodetic

    state = gnss.STREAM.new_state()
    (a, b, c) = local_to_geodetic([[0.0, 0.0, 0.0], [6.0, 8.0, 0.5], [6.0, 8.0, 0.5]])
    assert gnss.derive(state, 10.0, _fix(*a)) is None  # the first fix only sets the reference
    speed, step, climb, status, sigma = gnss.derive(state, 10.5, _fix(*b))
    assert step == pytest.approx(10.0, abs=0.01) and speed == pytest.approx(20.0, abs=0.02)
    assert climb == pytest.approx(1.0) and status == 0.0 and sigma == pytest.approx(1.5)
    # no solution: zero motion, status -1, the last good fix stays the reference
    assert list(gnss.derive(state, 11.0, _fix(math.nan, math.nan, status=-1.0))) == [0.0, 0.0, 0.0, -1.0, 1.5]
    speed, *_ = gnss.derive(state, 11.5, _fix(*c))
    assert speed == pytest.approx(0.0)
    with pytest.raises(ValueError, match="non-finite position"):
        gnss.derive(state, 12.0, _fix(math.nan, 8.4))


def test_gnss_config_parses_and_names_bad_fields(tmp_path):
    from flow_anomaly_ros.timeseries.signals import DEFAULT_CONFIG_PATH, ConfigError, load_pipeline_config

    config, doc = load_pipeline_config(DEFAULT_CONFIG_PATH.with_name("timeseries_model_gnss.yaml"))
    base, base_doc = load_pipeline_config(DEFAULT_CONFIG_PATH)
    assert config.streams == ["imu", "can", "gnss"]
    assert config.signals[: len(base.signals)] == base.signals  # extends: the base's signals, then GNSS's
    assert [s.name for s in config.signals if s.stream == "gnss"] == [
        "gnss.speed",
        "gnss.climb",
        "gnss.status",
        "gnss.sigma_h",
    ]
    assert doc["split"] == base_doc["split"] and "extends" not in doc
    back = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config  # as the manifest stores it
    assert "stream" not in base.to_dict()["signals"][0]  # IMU/CAN manifests unchanged by the registry
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"extends: {DEFAULT_CONFIG_PATH}\nfeatures:\n  signals:\n    - {{name: g.x, gnss: heading}}\n", "utf-8"
    )
    with pytest.raises(ConfigError, match=r"gnss field 'heading' not one of \['speed'"):
        load_pipeline_config(bad)


def test_gnss_jump_in_a_demo_bag_stands_out_of_every_clean_window(demo_bag):
    """The demo recorder's injected GPS jump (tens of metres) against the clean windows of the same bag: the step
    between fixes beyond the CAN-speed distance (``speed.gnss_vs_can``) is many times larger in the jump's windows
    than anywhere in clean driving (the feature, not a threshold on the injected size)."""
    from flow_anomaly_ros.data.bag_recording import recording_from_bag
    from flow_anomaly_ros.demo.recording import load_ground_truth
    from flow_anomaly_ros.timeseries.features import FeatureLayout
    from flow_anomaly_ros.timeseries.pipeline import featurize_recording, stack_features
    from flow_anomaly_ros.timeseries.signals import DEFAULT_CONFIG_PATH, load_pipeline_config
    from flow_anomaly_ros.timeseries.status import OK

    config, _ = load_pipeline_config(DEFAULT_CONFIG_PATH.with_name("timeseries_model_gnss.yaml"))
    rec = recording_from_bag(demo_bag, IMU, CAN, {"gnss": GPS})
    windows = featurize_recording(config, rec)
    assert sum(w.status == OK for w in windows) > 100  # GNSS warms up over its first fixes, then every window scores
    x, idx = stack_features(windows)
    residual = np.abs(x[:, FeatureLayout(config).names.index("speed.gnss_vs_can:mean")])
    [jump] = [iv for iv in load_ground_truth(demo_bag)["intervals"] if iv["kind"] == "gps_jump"]
    start = np.array([windows[i].start_s for i in idx])
    end = np.array([windows[i].end_s for i in idx])
    during = (end > jump["start_s"]) & (start < jump["end_s"])
    # clean: before the jump, or after the fix that jumps back (<= 1 s after its end) has been held for its 1 s
    clean = (end < jump["start_s"]) | (start > jump["end_s"] + 2.0)
    assert clean.sum() > 50
    assert residual[during].max() > 5 * residual[clean].max()


def test_ts_train_bag_reads_gnss_through_the_registry(demo_bag, tmp_path):
    from flow_anomaly_ros.timeseries.bag_training import BagTrainingError, stream_topic_map, train_from_bags
    from flow_anomaly_ros.timeseries.pipeline import StreamingScorer
    from flow_anomaly_ros.timeseries.signals import DEFAULT_CONFIG_PATH, load_pipeline_config

    config, doc = load_pipeline_config(DEFAULT_CONFIG_PATH.with_name("timeseries_model_gnss.yaml"))
    doc = {**doc, "split": {"train": [0.0, 0.6], "calibrate": [0.6, 1.0]}}  # an 18 s bag: slices long enough
    assert stream_topic_map(None, config) == {"gnss": GPS}  # the registry's default topic
    assert stream_topic_map(["gnss=/car/fix"], config) == {"gnss": "/car/fix"}
    with pytest.raises(BagTrainingError, match="reads no 'odom' stream"):
        stream_topic_map(["odom=/odom"], config)
    with pytest.raises(BagTrainingError, match="topic /car/fix is not in the bag"):
        train_from_bags(config, doc, [demo_bag], "iforest", topics={"gnss": "/car/fix"})
    model, summary = train_from_bags(config, doc, [demo_bag], "iforest")
    assert summary["signals"]["gnss.speed"]["samples"] == 18  # one per fix
    assert summary["data"]["topics"] == {"gnss": GPS}
    model.save(tmp_path / "model")
    assert StreamingScorer.from_model_dir(tmp_path / "model").config.streams == ["imu", "can", "gnss"]
