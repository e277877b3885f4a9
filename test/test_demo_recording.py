"""The demo recording: GPS conversion, generated camera stream with exact labels, ground truth beside the bag."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flow_anomaly_ros.demo import config as C
from flow_anomaly_ros.demo.config import DemoConfig, cache_dir
from flow_anomaly_ros.demo.recording import camera_frames, local_to_geodetic


def test_local_xyz_converts_to_wgs84_around_the_documented_origin():
    origin = local_to_geodetic([[0.0, 0.0, 0.0]])[0]
    assert origin.tolist() == pytest.approx([C.GPS_ORIGIN_LAT_DEG, C.GPS_ORIGIN_LON_DEG, C.GPS_ORIGIN_ALT_M])
    north, east, up = local_to_geodetic([[0, 1000.0, 0], [1000.0, 0, 0], [0, 0, 12.5]])
    # 1 km north is ~0.008993 deg of latitude at 49 deg N; 1 km east ~0.01370 deg of longitude (WGS84)
    assert north[0] - C.GPS_ORIGIN_LAT_DEG == pytest.approx(0.0089932, rel=2e-3)
    assert east[1] - C.GPS_ORIGIN_LON_DEG == pytest.approx(1000 / (111_320 * math.cos(math.radians(49.011))), rel=3e-3)
    assert up[2] == pytest.approx(C.GPS_ORIGIN_ALT_M + 12.5)


def test_camera_frames_are_seeded_labelled_and_partly_anomalous():
    cfg = DemoConfig.quick()
    a = camera_frames(cfg, 100.0, 6.0)
    b = camera_frames(cfg, 100.0, 6.0)
    assert len(a) == 12 and all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert a[0].image.shape == (cfg.camera_height, cfg.camera_width, 3) and a[0].image.dtype == np.uint8
    anomalous = [f for f in a if f.anomaly_mask.any()]
    assert 0 < len(anomalous) < len(a)
    assert all(f.kinds for f in anomalous) and not any(f.kinds for f in a if not f.anomaly_mask.any())
    stamps = [f.stamp_s for f in a]
    assert np.allclose(np.diff(stamps), 1 / cfg.camera_hz)


def test_cache_dir_follows_env_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(C.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "flow_anomaly_ros"


def test_cache_keys_change_only_with_what_determines_the_artefact():
    cfg = DemoConfig()
    assert cfg.with_overrides(replay_rate=3.0).bag_key() == cfg.bag_key()
    assert cfg.with_overrides(replay_rate=3.0).seg_model_key() == cfg.seg_model_key()
    assert cfg.with_overrides(seed=5).bag_key() != cfg.bag_key()
    assert cfg.with_overrides(seg_train_steps=7).seg_model_key() != cfg.seg_model_key()
    assert cfg.with_overrides(seg_train_steps=7).bag_key() == cfg.bag_key()
