"""The time-series streams of the demo bag and the training of its detectors, from the time-series core.

Data (all through ``flow_anomaly_ros.data`` / ``flow_anomaly_ros.timeseries``, shared with ``flow-anomaly ts``):
the real KITTI drive (``data.kitti``), CAN frames generated from the opendbc Toyota Prius DBC driven by that drive
(``data.can_traffic``) and labelled faults and attacks injected by ``data.injection``. The split follows
``config/timeseries_model.yaml``: detectors train on the clean early drive (``split.train``), calibrate their
threshold on ``split.calibrate``, and the demo bag holds the first ``bag_duration_s`` of ``split.test``.

GPS is an input of the demo's detectors through the GNSS stream (``streams/gnss.py``, the signals and checks of
``config/timeseries_model_gnss.yaml``, the demo's model config); the demo injects labelled GPS jumps (a position
step of tens of metres for a few seconds, as a multipath or spoofing event looks) that they are scored on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.demo.config import TS_CONFIG, DemoConfig

# Bag time = drive time + this epoch (2011-09-30 00:00:00 UTC, during the KITTI raw recordings), so stamps look
# like real ROS times and never start at 0.
BAG_EPOCH_S = 1_317_340_800.0
GPS_JUMP_M = (25.0, 60.0)  # horizontal jump size range
GPS_JUMP_S = (3.0, 8.0)  # duration range
FAULT_LEAD_S = 3.0  # clean driving before the first fault (the first 2 s window must fill)
FAULT_SLOT_S = 7.5  # one fault per slot: 3 s fault + clean gaps (schedule_faults needs >= 7 s)


@dataclass
class TimeseriesStreams:
    """The time-series part of the demo recording, already injected, in bag time (seconds since the epoch)."""

    imu_t: np.ndarray  # (N,)
    accel: np.ndarray  # (N, 3) m/s^2
    gyro: np.ndarray  # (N, 3) rad/s
    can: list[tuple[float, int, bytes, int, bool, bool]]  # the core's CAN events
    gps_t: np.ndarray  # (M,)
    gps_xyz: np.ndarray  # (M, 3) local metres
    labels: list[dict[str, Any]]  # {"stream", "kind", "start_s", "end_s", "severity", ...}
    provenance: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _split_bounds(doc: dict[str, Any], t_end: float) -> dict[str, tuple[float, float]]:
    """Split fractions of config/timeseries_model.yaml as drive times (as ``build_dataset`` computes them)."""
    from flow_anomaly_ros.data.timeseries_dataset import DEFAULT_SPLIT

    split = {k: tuple(v) for k, v in (doc.get("split") or DEFAULT_SPLIT).items() if k in DEFAULT_SPLIT}
    return {k: (a * t_end, b * t_end) for k, (a, b) in split.items()}


def demo_faults(duration_s: float, rng: np.random.Generator) -> list[str]:
    """As many fault types as fit into the bag with clean gaps (7 s a slot), alternating IMU faults and CAN attacks."""
    from flow_anomaly_ros.data.injection import CAN_ATTACKS, IMU_FAULTS

    n = max(2, int((duration_s - FAULT_LEAD_S) // FAULT_SLOT_S))
    imu, can = list(rng.permutation(IMU_FAULTS)), list(rng.permutation(CAN_ATTACKS))
    out = []
    while len(out) < n and (imu or can):
        for pool in (imu, can):
            if pool and len(out) < n:
                out.append(str(pool.pop(0)))
    return out


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
    from flow_anomaly_ros.data.injection import Injector, schedule_faults, signal_sigmas
    from flow_anomaly_ros.data.timeseries_dataset import base_recording
    from flow_anomaly_ros.timeseries.events import KIND_CAN, KIND_IMU
    from flow_anomaly_ros.timeseries.signals import load_pipeline_config

    pcfg, doc = load_pipeline_config(TS_CONFIG)
    seed = int(doc.get("dataset", {}).get("seed", 7))
    base, extra = base_recording(pcfg, seed)  # the same clean drive + CAN the detectors train on
    drive, phys = extra["drive"], extra["physical"]
    bounds = _split_bounds(doc, float(drive.t[-1]) + 1e-6)
    t0 = bounds["test"][0]
    t1 = min(bounds["test"][1], t0 + cfg.bag_duration_s)
    in_train = drive.t < bounds["train"][1]
    sigma = signal_sigmas(
        drive.accel[in_train], drive.gyro[in_train], drive.speed[in_train], phys["STEER_ANGLE"][in_train]
    )
    rng = np.random.default_rng([cfg.seed, 31])
    events = base.slice_time(t0, t1).events
    injector = Injector(pcfg, sigma, rng)
    labels: list[dict[str, Any]] = []
    for fault, start in schedule_faults(t0 + FAULT_LEAD_S, t1, demo_faults(t1 - t0, rng), rng):
        events, label = injector.inject(events, fault, cfg.severity, start)
        d = label.to_dict()
        d["kind"] = d.pop("fault")
        d["stream"] = "imu" if d["target"].startswith("imu") else "can"
        labels.append(d)
    gsel = (drive.gps_t >= t0) & (drive.gps_t < t1)
    gps_xyz, gps_labels = inject_gps_jumps(
        drive.gps_t[gsel], drive.gps_xyz[gsel], t0, t1, rng, count=max(1, int((t1 - t0) // 30))
    )
    labels = sorted(labels + gps_labels, key=lambda lb: lb["start_s"])
    for lb in labels:
        lb["start_s"] = float(lb["start_s"]) + BAG_EPOCH_S
        lb["end_s"] = float(lb["end_s"]) + BAG_EPOCH_S
    imu_rows = events[events["kind"] == KIND_IMU]
    can_rows = events[events["kind"] == KIND_CAN]
    can_list = [
        (
            float(r["stamp"]) + BAG_EPOCH_S,
            int(r["can_id"]),
            r["data"][: min(8, int(r["dlc"]))].tobytes(),
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
        provenance={"imu": f"real: {drive.source}; faults injected (seeded, flow_anomaly_ros.data.injection)"},
        extra={"drive_range_s": [t0, t1], "bag_epoch_s": BAG_EPOCH_S, "dbc": pcfg.dbc, "sigma": sigma},
    )


@functools.lru_cache(maxsize=2)
def training_features(
    train_split: tuple[float, float] | None = None, calibrate_split: tuple[float, float] | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Window features of the clean train and calibrate splits, exactly as ``flow-anomaly ts train`` makes them
    (computed once per process and shared by every detector)."""
    from flow_anomaly_ros.data.timeseries_dataset import DEFAULT_SPLIT, build_dataset
    from flow_anomaly_ros.timeseries.experiment import dataset_params, featurize_dataset, train_stride
    from flow_anomaly_ros.timeseries.signals import load_pipeline_config

    pcfg, doc = load_pipeline_config(TS_CONFIG)
    params = {**dataset_params(doc), "test_copies": 0}
    if train_split or calibrate_split:
        split = dict(params["split"] or DEFAULT_SPLIT)
        split.update({k: v for k, v in (("train", train_split), ("calibrate", calibrate_split)) if v})
        params["split"] = split
    ds = build_dataset(pcfg, **params)
    feats = featurize_dataset(pcfg, ds, train_stride_s=train_stride(pcfg, doc))
    return pcfg, feats, {"doc": doc, "data": ds.meta}


def train_detector(cfg: DemoConfig, detector: str, out: Path) -> Path:
    """Fit ``detector`` (parameters from config/timeseries_model.yaml) on the clean train split, calibrate its
    threshold on the calibrate split and save the model directory: the steps of ``flow-anomaly ts train``."""
    from flow_anomaly_ros.timeseries.experiment import detector_params, fit_model

    pcfg, feats, info = training_features(cfg.ts_train_split, cfg.ts_calibrate_split)
    params = detector_params(detector, cfg.ts_quick)
    model = fit_model(pcfg, feats, detector, info["doc"], params, progress=True, threads=1)
    training = {
        "data": info["data"],
        "n_train": int(feats.x_train.shape[0]),
        "n_calibrate": int(feats.x_calibrate.shape[0]),
        "by": "flow-anomaly demo run",
    }
    return model.save(out, training=training)
