"""The camera threshold is calibrated on clean frames, and the demo's model no longer flags a constant band.

Regression of the first demo model: its anomaly probability sat at ~0.49 on every pixel with a small bias tied to
the image border, so the fixed threshold 0.5 cut the same band of rows out of every frame (5 % of the pixels, in all
119 frames of the bag). The fix has two parts, both tested here: the camera model starts from a base that really
segments (models/seg_base_mobilenet), and its threshold is chosen on anomaly-free frames for the node's decision.
"""

from __future__ import annotations

import numpy as np
import pytest

from flow_anomaly_ros.segmentation.calibration import calibrate_clean_threshold, clean_frame_stats, clean_scenes


def _band_maps(n: int = 20, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        m = 0.49 + 0.004 * rng.standard_normal((64, 128)).astype(np.float32)
        m[50:56] += 0.03  # the constant band: same rows in every frame
        maps.append(m)
    return maps


def test_a_fixed_threshold_on_a_biased_model_flags_the_same_band_in_every_frame():
    stats = clean_frame_stats([m >= 0.5 for m in _band_maps()])
    assert stats["max_position_rate"] == 1.0 and stats["pixel_rate"] > 0.05


def test_calibration_puts_the_threshold_above_the_band():
    maps = _band_maps()
    cal = calibrate_clean_threshold(maps, min_region_area=16, max_frame_rate=0.05)
    assert cal.threshold > 0.5  # the band (~0.52) is above the fixed threshold; the calibrated one is above it
    masks = [m >= cal.threshold for m in maps]
    stats = clean_frame_stats(masks)
    assert stats["pixel_rate"] <= 2e-4 and stats["max_position_rate"] <= 0.05
    assert cal.frame_alarm_rate <= 0.05 and cal.frames == 20


def test_calibration_keeps_the_natural_threshold_when_clean_frames_are_quiet():
    maps = [np.full((32, 32), 0.01, np.float32) for _ in range(5)]
    assert calibrate_clean_threshold(maps).threshold == 0.5  # never below the anomaly class winning
    assert calibrate_clean_threshold(maps, floor=None).threshold <= 0.0101


def test_calibration_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        calibrate_clean_threshold([])
    with pytest.raises(ValueError, match="NaN"):
        calibrate_clean_threshold([np.full((8, 8), np.nan, np.float32)])


@pytest.fixture(scope="module")
def demo_camera_model(tmp_path_factory):
    """The CI-size demo camera model: the shipped base fine-tuned with MAF negatives, calibrated, exported."""
    from flow_anomaly_ros.demo.config import DemoConfig
    from flow_anomaly_ros.demo.training import train_segmentation

    out = tmp_path_factory.mktemp("seg") / "model"
    return train_segmentation(DemoConfig.quick(), out, progress=False)


def test_the_demo_model_starts_from_the_shipped_base_and_records_its_calibration(demo_camera_model):
    from flow_anomaly_ros.model_store import read_manifest
    from flow_anomaly_ros.segmentation.base_model import default_base_model

    manifest = read_manifest(demo_camera_model)
    weights = manifest["training"]["config"]["model"]["weights"]
    assert weights == str(default_base_model())
    cal = manifest["threshold_calibration"]
    assert cal["rule"] == "clean-frame false alarms" and cal["threshold"] == manifest["thresholds"]["anomaly_prob"]
    assert (demo_camera_model / "model.onnx").is_file()


def test_the_demo_model_flags_almost_nothing_on_clean_frames_and_no_constant_band(demo_camera_model):
    from flow_anomaly_ros.ros.camera_pipeline import FrameProcessor
    from flow_anomaly_ros.runtime import load_backend

    backend = load_backend("onnxruntime", demo_camera_model, device="cpu")
    processor = FrameProcessor(backend, "anomaly_prob", backend.spec.threshold_for("anomaly_prob"), 16)
    # other clean scenes than the calibration ones (seed 30 000) and the training ones
    masks = [processor.process(image).mask != 0 for image in clean_scenes(20, (256, 512), seed=40_000)]
    stats = clean_frame_stats(masks)
    assert stats["pixel_rate"] < 1e-3, stats  # under 0.1 % of the pixels on average
    assert stats["max_position_rate"] <= 0.05, stats  # no pixel position flagged in more than 5 % of the frames


def test_the_demo_installs_its_models_where_the_node_configs_look(demo_camera_model, tmp_path):
    import yaml

    from flow_anomaly_ros.demo.cores import DemoModels
    from flow_anomaly_ros.demo.pipeline import DEFAULT_MODEL_DIRS, install_default_models

    ts = tmp_path / "ts"
    ts.mkdir()
    (ts / "manifest.json").write_text("{}")
    placed = install_default_models(DemoModels({"realnvp": ts}, demo_camera_model), models_root=tmp_path / "models")
    assert (placed["camera"] / "model.onnx").is_file() and (placed["timeseries"] / "manifest.json").is_file()
    from flow_anomaly_ros.segmentation.base_model import models_dir

    config = models_dir().parent / "config"
    cam = yaml.safe_load((config / "camera_anomaly.yaml").read_text())
    ts_cfg = yaml.safe_load((config / "timeseries_anomaly.yaml").read_text())
    assert next(iter(cam.values()))["ros__parameters"]["model_path"] == f"models/{DEFAULT_MODEL_DIRS['camera']}"
    assert next(iter(ts_cfg.values()))["ros__parameters"]["model_dir"] == f"models/{DEFAULT_MODEL_DIRS['timeseries']}"
