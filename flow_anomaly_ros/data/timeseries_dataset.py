"""The labelled time-series data set: KITTI IMU + DBC-generated CAN, split by time, faults injected in the test part.

Split (fractions of the drive, ``split`` in ``config/timeseries_model.yaml``): train and calibrate on clean early
driving, test on the later driving. The test segment is copied ``test_copies`` times per severity; every copy gets
each fault type of :data:`flow_anomaly_ros.data.injection.FAULT_TYPES` once, at seeded random times with clean
stretches between faults, so each fault type appears ``test_copies`` times per severity. Labels are time intervals
with their fault type (see :class:`flow_anomaly_ros.data.injection.FaultInterval`). Everything is seeded: the same
seed gives the same bytes.

The recording is real KITTI motion with synthesised CAN traffic and injected anomalies: say so wherever results
are shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.data.can_traffic import generate_can_events, vehicle_signals
from flow_anomaly_ros.data.injection import (
    FAULT_TYPES,
    SEVERITIES,
    FaultInterval,
    Injector,
    schedule_faults,
    signal_sigmas,
)
from flow_anomaly_ros.data.kitti import CITATION, fix_values, load_kitti_drive
from flow_anomaly_ros.model_store import atomic_write_json
from flow_anomaly_ros.streams import gnss as gnss_stream
from flow_anomaly_ros.timeseries.events import Recording, concat_events, imu_events
from flow_anomaly_ros.timeseries.signals import PipelineConfig

DEFAULT_SPLIT = {"train": (0.0, 0.55), "calibrate": (0.55, 0.67), "test": (0.67, 1.0)}


@dataclass
class TestCopy:
    severity: str
    index: int
    recording: Recording
    labels: list[FaultInterval]


@dataclass
class TimeseriesDataset:
    train: Recording
    calibrate: Recording
    tests: list[TestCopy]
    meta: dict[str, Any] = field(default_factory=dict)

    def tests_for(self, severity: str) -> list[TestCopy]:
        return [t for t in self.tests if t.severity == severity]


def base_recording(
    config: PipelineConfig, seed: int = 0, duration_s: float | None = None
) -> tuple[Recording, dict[str, Any]]:
    """The clean drive (first ``duration_s`` or all): KITTI IMU + CAN generated from the DBC (+ the KITTI GPS fixes
    when the config reads GNSS), and its signals."""
    drive = load_kitti_drive()
    if duration_s is not None:
        drive = drive.head(duration_s)
    can = generate_can_events(drive, config, seed=seed)
    parts = [imu_events(drive.t, drive.accel, drive.gyro), can]
    if "gnss" in config.streams:  # the drive's real fixes, as the demo bag carries them (WGS84 around its origin)
        parts.append(gnss_stream.to_events(list(zip(drive.gps_t, fix_values(drive.gps_xyz)))))
    events = concat_events(parts)
    phys = vehicle_signals(drive, seed)
    meta = {"source": CITATION, "dbc": config.dbc, "duration_s": drive.duration_s, "seed": seed}
    return Recording(events, ("imu",), meta), {"drive": drive, "physical": phys}


def build_dataset(
    config: PipelineConfig,
    seed: int = 7,
    test_copies: int = 4,
    severities: tuple[str, ...] = SEVERITIES,
    split: dict[str, tuple[float, float]] | None = None,
    faults: tuple[str, ...] = FAULT_TYPES,
) -> TimeseriesDataset:
    """Build the split and the injected test copies (seeded)."""
    split = {k: tuple(v) for k, v in (split or DEFAULT_SPLIT).items()}
    base, extra = base_recording(config, seed)
    drive, phys = extra["drive"], extra["physical"]
    t_end = float(drive.t[-1]) + 1e-6
    bounds = {k: (a * t_end, b * t_end) for k, (a, b) in split.items()}
    train = base.slice_time(*bounds["train"])
    calibrate = base.slice_time(*bounds["calibrate"])
    in_train = drive.t < bounds["train"][1]
    sigma = signal_sigmas(
        drive.accel[in_train], drive.gyro[in_train], drive.speed[in_train], phys["STEER_ANGLE"][in_train]
    )
    test_base = base.slice_time(*bounds["test"])
    rng = np.random.default_rng(seed)
    tests = []
    for severity in severities:
        for copy in range(test_copies):
            injector = Injector(config, sigma, rng)
            events = test_base.events
            labels = []
            for fault, start in schedule_faults(bounds["test"][0] + 3.0, bounds["test"][1], faults, rng):
                events, label = injector.inject(events, fault, severity, start)
                labels.append(label)
            rec = Recording(events, ("imu",), {**base.meta, "severity": severity, "copy": copy})
            tests.append(TestCopy(severity, copy, rec, sorted(labels, key=lambda x: x.start_s)))
    meta = {**base.meta, "split_s": bounds, "sigma": sigma, "test_copies": test_copies, "faults": list(faults)}
    return TimeseriesDataset(train, calibrate, tests, meta)


def save_dataset(ds: TimeseriesDataset, out_dir: str | Path) -> Path:
    """Write ``train.npz``, ``calibrate.npz``, ``test_<severity>_<i>.npz`` and ``labels.json`` (+ ``meta``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds.train.save(out / "train.npz")
    ds.calibrate.save(out / "calibrate.npz")
    labels = {}
    for t in ds.tests:
        name = f"test_{t.severity}_{t.index}"
        t.recording.save(out / f"{name}.npz")
        labels[name] = [x.to_dict() for x in t.labels]
    atomic_write_json(out / "labels.json", {"meta": ds.meta, "tests": labels})
    return out


def load_dataset(out_dir: str | Path) -> TimeseriesDataset:
    out = Path(out_dir)
    try:
        doc = json.loads((out / "labels.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FileNotFoundError(f"no valid data set in {out} (labels.json: {exc})") from exc
    tests = []
    for name, labels in doc["tests"].items():
        _, severity, index = name.rsplit("_", 2)
        tests.append(
            TestCopy(severity, int(index), Recording.load(out / f"{name}.npz"), [FaultInterval(**x) for x in labels])
        )
    return TimeseriesDataset(
        Recording.load(out / "train.npz"), Recording.load(out / "calibrate.npz"), tests, doc["meta"]
    )
