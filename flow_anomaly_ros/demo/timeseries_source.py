"""The time-series streams of the demo bag and the training of its detectors, from the time-series core.

Data (all through ``flow_anomaly_ros.data`` / ``flow_anomaly_ros.timeseries``, shared with ``flow-anomaly ts``):
the real KITTI drive (``data.kitti``), CAN frames generated from the opendbc Toyota Prius DBC driven by that drive
(``data.can_traffic``) and labelled faults and attacks injected by ``data.injection``. The split follows
``config/timeseries_model.yaml``: detectors train on the clean early drive (``split.train``), calibrate their
threshold on ``split.calibrate``, and the demo bag holds the first ``bag_duration_s`` of ``split.test``.

GPS is not an input of any detector; the demo still injects labelled GPS jumps (a position step of tens of metres
for a few seconds, as a multipath or spoofing event looks) so that every stream carries anomalies, and says that
no node scores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.demo.config import DemoConfig
from flow_anomaly_ros.demo.recording import TimeseriesStreams

# Bag time = drive time + this epoch (2011-09-30 00:00:00 UTC, during the KITTI raw recordings), so stamps look
# like real ROS times and never start at 0.
BAG_EPOCH_S = 1_317_340_800.0
GPS_JUMP_M = (25.0, 60.0)  # horizontal jump size range
GPS_JUMP_S = (3.0, 8.0)  # duration range


def _drive_and_config() -> tuple[Any, Any, dict[str, Any]]:
    from flow_anomaly_ros.data.kitti import load_kitti_drive
    from flow_anomaly_ros.timeseries.signals import default_config

    pcfg, doc = default_config()
    return load_kitti_drive(), pcfg, doc


def _split_range(doc: dict[str, Any], drive: Any, part: str) -> tuple[float, float]:
    a, b = doc.get("split", {}).get(part, {"train": [0.0, 0.55], "calibrate": [0.55, 0.67], "test": [0.67, 1.0]}[part])
    t0, t1 = float(drive.t[0]), float(drive.t[-1])
    return t0 + a * (t1 - t0), t0 + b * (t1 - t0)


def inject_gps_jumps(
    t: np.ndarray, xyz: np.ndarray, t0: float, t1: float, rng: np.random.Generator, count: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Shift the fixes inside ``count`` non-overlapping intervals by a constant horizontal offset; labels out."""
    out = np.array(xyz, dtype=np.float64, copy=True)
    labels: list[dict[str, Any]] = []
    span = t1 - t0
    slots = np.linspace(t0 + 0.1 * span, t1 - 0.1 * span, count + 1)
    for k in range(count):
        dur = float(rng.uniform(*GPS_JUMP_S))
        start = float(rng.uniform(slots[k], max(slots[k], slots[k + 1] - dur)))
        size = float(rng.uniform(*GPS_JUMP_M))
        ang = float(rng.uniform(0, 2 * np.pi))
        sel = (t >= start) & (t < start + dur)
        out[sel, 0] += size * np.cos(ang)
        out[sel, 1] += size * np.sin(ang)
        labels.append(
            {
                "stream": "gps",
                "kind": "gps_jump",
                "start_s": start,
                "end_s": start + dur,
                "severity": "clear",
                "magnitude_m": size,
            }
        )
    return out, labels


def build_streams(cfg: DemoConfig) -> TimeseriesStreams:
    """IMU, CAN and GPS of the demo bag's time range with labelled injected anomalies, in bag time."""
    from flow_anomaly_ros.data import injection
    from flow_anomaly_ros.data.can_traffic import generate_can_events
    from flow_anomaly_ros.timeseries.events import KIND_CAN, KIND_IMU, concat_events, imu_events

    drive, pcfg, doc = _drive_and_config()
    test0, test1 = _split_range(doc, drive, "test")
    t0, t1 = test0, min(test1, test0 + cfg.bag_duration_s)
    keep = (drive.t >= t0) & (drive.t < t1)
    imu = imu_events(drive.t[keep], drive.accel[keep], drive.gyro[keep])
    can = generate_can_events(drive, pcfg, seed=cfg.seed)
    can = can[(can["stamp"] >= t0) & (can["stamp"] < t1)]
    events = concat_events([imu, can])
    rng = np.random.default_rng([cfg.seed, 31])
    events, labels = injection.inject_demo(events, pcfg, t0, t1, rng, severity=cfg.severity)
    gsel = (drive.gps_t >= t0) & (drive.gps_t < t1)
    gps_xyz, gps_labels = inject_gps_jumps(
        drive.gps_t[gsel], drive.gps_xyz[gsel], t0, t1, rng, count=max(1, int((t1 - t0) // 30))
    )
    labels = [dict(lb) for lb in labels] + gps_labels
    for lb in labels:
        lb["start_s"] = float(lb["start_s"]) + BAG_EPOCH_S
        lb["end_s"] = float(lb["end_s"]) + BAG_EPOCH_S
    imu_rows = events[events["kind"] == KIND_IMU]
    can_rows = events[events["kind"] == KIND_CAN]
    can_list = [
        (
            float(r["stamp"]) + BAG_EPOCH_S,
            int(r["can_id"]),
            bytes(r["data"][: int(r["dlc"])].tobytes()),
            int(r["dlc"]),
            bool(r["is_error"]),
            bool(r["is_extended"]),
        )
        for r in can_rows
    ]
    return TimeseriesStreams(
        imu_t=imu_rows["stamp"] + BAG_EPOCH_S,
        accel=np.asarray(imu_rows["accel"]),
        gyro=np.asarray(imu_rows["gyro"]),
        can=can_list,
        gps_t=drive.gps_t[gsel] + BAG_EPOCH_S,
        gps_xyz=gps_xyz,
        labels=labels,
        provenance={"imu": f"real: {drive.source}; faults injected (seeded, data.injection)"},
        extra={"drive_range_s": [t0, t1], "bag_epoch_s": BAG_EPOCH_S, "dbc": pcfg.dbc},
    )


def train_detector(cfg: DemoConfig, detector: str, out: Path) -> Path:
    """Train ``detector`` on the clean training split with the time-series core's trainer into ``out``."""
    from flow_anomaly_ros.timeseries import training

    return training.train_detector_dir(detector, out, seed=cfg.seed)
