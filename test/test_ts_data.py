"""Data: real KITTI from gtsam, DBC-encoded CAN driven by it, seeded labelled injections."""

from __future__ import annotations

import numpy as np
import pytest

from flow_anomaly_ros.data.can_traffic import MPH, vehicle_signals
from flow_anomaly_ros.data.injection import FAULT_TYPES, Injector, signal_sigmas
from flow_anomaly_ros.data.kitti import load_kitti_drive
from flow_anomaly_ros.data.timeseries_dataset import base_recording
from flow_anomaly_ros.timeseries.events import KIND_CAN, KIND_IMU, Recording
from flow_anomaly_ros.timeseries.signals import default_config, load_dbc, message_period_s


@pytest.fixture(scope="module")
def setup():
    config, _ = default_config()
    rec, extra = base_recording(config, seed=0, duration_s=60.0)
    drive, phys = extra["drive"], extra["physical"]
    sigma = signal_sigmas(drive.accel, drive.gyro, drive.speed, phys["STEER_ANGLE"])
    return config, rec, drive, phys, sigma


def test_kitti_drive_is_the_real_100hz_recording():
    drive = load_kitti_drive()
    assert 465 < drive.duration_s < 475 and len(drive.t) > 46000
    assert np.median(np.diff(drive.t)) == pytest.approx(0.01, abs=1e-4)
    assert np.mean(drive.accel[:, 2]) == pytest.approx(9.8, abs=0.3)  # z up: gravity
    assert 3.0 < drive.speed.mean() < 15.0 and drive.speed.min() >= 0.0
    assert len(drive.gps_t) > 400


def test_can_frames_decode_to_the_driven_values_at_the_dbc_periods(setup):
    config, rec, drive, phys, _ = setup
    ev = rec.events
    db = load_dbc(config.dbc)
    for name in config.can_messages:
        msg = db.get_message_by_name(name)
        rows = ev[(ev["kind"] == KIND_CAN) & (ev["can_id"] == msg.frame_id)]
        assert np.median(np.diff(rows["stamp"])) == pytest.approx(message_period_s(config, name), rel=0.02)
        assert (rows["dlc"] == msg.length).all()
    ws = db.get_message_by_name("WHEEL_SPEEDS")
    rows = ev[(ev["kind"] == KIND_CAN) & (ev["can_id"] == ws.frame_id)]
    decoded = np.array([ws.decode(r["data"][:8].tobytes())["WHEEL_SPEED_RL"] for r in rows[::50]])
    driven = np.interp(rows["stamp"][::50], drive.t, phys["WHEEL_SPEED_RL"])
    assert np.max(np.abs(decoded - driven)) <= 0.0062 / 2 + 1e-9  # the DBC's quantisation step (mph)
    assert np.corrcoef(decoded * MPH, np.interp(rows["stamp"][::50], drive.t, drive.speed))[0, 1] > 0.99


def test_yaw_rate_signal_uses_the_dbc_sign_range(setup):
    _, _, _, phys, _ = setup
    assert phys["YAW_RATE"].min() < -1.0  # negative yaw rates must survive encoding (offset -512)


@pytest.mark.parametrize("fault", FAULT_TYPES)
@pytest.mark.parametrize("severity", ["clear", "subtle"])
def test_each_injection_changes_the_recording_and_labels_it(setup, fault, severity):
    config, rec, _, _, sigma = setup
    ev = rec.events
    inj = Injector(config, sigma, np.random.default_rng(3))
    out, label = inj.inject(ev, fault, severity, start=30.0)
    assert label.fault == fault and label.severity == severity and 30.0 <= label.start_s < label.end_s <= 34.0
    assert out.dtype == ev.dtype and np.all(np.diff(out["stamp"]) >= 0)
    inside = lambda e: (e["stamp"] >= label.start_s) & (e["stamp"] < label.end_s)  # noqa: E731
    outside_before = ev["stamp"] < 29.0
    assert np.array_equal(out[out["stamp"] < 29.0], ev[outside_before])  # nothing before the fault changes
    a, b = ev[inside(ev)], out[inside(out)]
    changed = len(a) != len(b) or not all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in ("accel", "gyro", "can_id", "data")
    )
    assert changed, f"{fault}/{severity} did not change anything inside its interval"
    if fault == "nan":
        assert np.isnan(out[inside(out) & (out["kind"] == KIND_IMU)]["gyro"]).all()
    if fault == "dropout":
        assert not ((out["kind"] == KIND_IMU) & inside(out)).any()


@pytest.mark.parametrize("severity", ["clear", "subtle"])
def test_replay_near_the_recording_start_still_replays_old_frames(setup, severity):
    """A replay 8 s into a recording cannot reach 30 s back: it re-sends frames from its start instead."""
    config, rec, _, _, sigma = setup
    ev = rec.slice_time(20.0, 60.0).events
    first = float(ev["stamp"][0])
    out, label = Injector(config, sigma, np.random.default_rng(1)).inject(ev, "replay", severity, first + 8.0)
    assert label.magnitude == pytest.approx(8.0)  # the age of the replayed frames (s)
    inside = lambda e: (e["stamp"] >= label.start_s) & (e["stamp"] < label.end_s) & (e["kind"] == KIND_CAN)  # noqa: E731
    assert inside(out).sum() > inside(ev).sum() * (1.2 if severity == "clear" else 1.01)
    with pytest.raises(ValueError, match="needs at least 3 s of earlier traffic"):
        Injector(config, sigma, np.random.default_rng(1)).inject(ev, "replay", severity, first + 1.0)


def test_injection_is_seeded(setup):
    config, rec, _, _, sigma = setup
    a, la = Injector(config, sigma, np.random.default_rng(5)).inject(rec.events, "fuzzing", "subtle", 20.0)
    b, lb = Injector(config, sigma, np.random.default_rng(5)).inject(rec.events, "fuzzing", "subtle", 20.0)
    assert la == lb and a.tobytes() == b.tobytes()


def test_recording_round_trip(setup, tmp_path):
    _, rec, _, _, _ = setup
    small = rec.slice_time(10.0, 12.0)
    small.save(tmp_path / "r.npz")
    back = Recording.load(tmp_path / "r.npz")
    assert back.events.tobytes() == small.events.tobytes() and back.imu_sources == ("imu",)


def test_vehicle_signals_are_seeded(setup):
    _, _, drive, _, _ = setup
    a, b = vehicle_signals(drive, 1), vehicle_signals(drive, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
