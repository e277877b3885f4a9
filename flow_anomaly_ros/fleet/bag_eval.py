"""One bag of a fleet job: the serial commands' offline cores, and the alarm review a fleet operator asks for.

:func:`evaluate_bag` is the one per-bag function: the Ray task calls it, and so does a serial run; it never imports
Ray. What it runs:

- every bag: ``ts score``'s :func:`~flow_anomaly_ros.timeseries.bag_training.score_bag` (the node's
  StreamingScorer, with per-feature contributions) -> alarm events (consecutive alarming windows: start, end, peak
  score, top contributing signals), data-quality events (STALE / INVALID windows), alarms per hour and per km
  (distance from the NavSatFix topic when the bag has one), time in each window status;
- with a camera model: the camera node's FrameProcessor on every image (``demo.evaluate.camera_results``) ->
  camera alarm events (consecutive frames with an anomaly region), alarms per hour / km;
- labelled bags (the demo's ``ground_truth.json`` inside or beside the bag): ``flow-anomaly evaluate``'s
  :func:`~flow_anomaly_ros.demo.evaluate.evaluate_offline` -> its metric tables (time-series and camera).

The result is a JSON-ready dict (NaN -> None); fields that depend on the machine (wall time, memory) sit under
``"run"`` so that two runs of the same bag compare equal without them.
"""

from __future__ import annotations

import math
import os
import resource
import socket
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.fleet.inputs import BagJob

DEFAULT_IMU_TOPIC = "/imu/data"
DEFAULT_CAN_TOPIC = "/from_can_bus"
DEFAULT_CAMERA_TOPIC = "/camera/image_raw"
DEFAULT_GPS_TOPIC = "/gps/fix"
MAX_GPS_SPEED_MPS = 70.0  # a step implying more than this is a GPS jump, not driving: not counted as distance
PLAY_LEAD_S = 2.0  # the review command starts this long before the event


class BagEvalError(RuntimeError):
    """The bag cannot be evaluated (missing, not a bag, truncated, corrupt); the message names the problem."""


@dataclass(frozen=True)
class FleetModels:
    """Model directories (on the machine that runs the bag) and the camera decision parameters."""

    ts_model: str
    seg_model: str | None = None
    seg_backend: str = "onnxruntime"
    score_method: str = "anomaly_prob"
    threshold: float | None = None
    min_region_area: int = 16


@dataclass(frozen=True)
class EvalOptions:
    """Topics and review settings; part of the models hash (they change the results)."""

    imu_topic: str = DEFAULT_IMU_TOPIC
    can_topic: str = DEFAULT_CAN_TOPIC
    camera_topic: str = DEFAULT_CAMERA_TOPIC
    gps_topic: str = DEFAULT_GPS_TOPIC
    top_signals: int = 3
    metrics: bool = True  # labelled bags: also the `flow-anomaly evaluate` metric tables
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def clean_json(obj: Any) -> Any:
    """Numpy scalars/arrays to Python, NaN/inf to None, tuple keys/values to lists: strict JSON, stable compare."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[first, last] index of each run of True in ``flags``."""
    f = np.concatenate([[False], np.asarray(flags, bool), [False]])
    d = np.diff(f.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1, strict=True))


def check_bag(path: str | Path) -> Path:
    """The bag path, or BagEvalError saying why it is not a readable bag (before any core runs)."""
    p = Path(path)
    if not p.exists():
        raise BagEvalError(f"bag {p} does not exist")
    if p.is_dir() and not (p / "metadata.yaml").is_file():
        raise BagEvalError(f"{p} is not a rosbag2 bag: no metadata.yaml in the directory")
    if p.is_file() and p.suffix not in (".mcap", ".db3"):
        raise BagEvalError(f"{p} is not a rosbag2 file (.mcap or .db3)")
    return p


def _bag_span(bag: Path) -> tuple[float, float, dict[str, str]]:
    """(start, end) in seconds of bag time and the topics, read from the bag (a corrupt index fails here)."""
    from flow_anomaly_ros.data.bags import BagReader

    with BagReader(bag) as r:
        return r.start_ns * 1e-9, r.end_ns * 1e-9, r.topics()


def distance_km(bag: Path, topic: str) -> float | None:
    """Distance driven from sensor_msgs/NavSatFix fixes (haversine; no-fix and jump steps skipped); None = no GPS."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import NavSatFix

    from flow_anomaly_ros.data.bags import BagReader

    fixes: list[tuple[float, float, float]] = []
    with BagReader(bag) as r:
        if r.topics().get(topic) != "sensor_msgs/msg/NavSatFix":
            return None
        for m in r.messages([topic]):
            fix = deserialize_message(m.data, NavSatFix)
            if fix.status.status >= 0 and math.isfinite(fix.latitude) and math.isfinite(fix.longitude):
                fixes.append((m.stamp_ns * 1e-9, math.radians(fix.latitude), math.radians(fix.longitude)))
    if len(fixes) < 2:
        return None
    a = np.array(fixes)
    dlat, dlon = np.diff(a[:, 1]), np.diff(a[:, 2])
    h = np.sin(dlat / 2) ** 2 + np.cos(a[:-1, 1]) * np.cos(a[1:, 1]) * np.sin(dlon / 2) ** 2
    step_m = 2 * 6371008.8 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    dt = np.maximum(np.diff(a[:, 0]), 1e-9)
    return float(step_m[step_m / dt <= MAX_GPS_SPEED_MPS].sum() / 1000.0)


def play_command(bag: str, offset_s: float) -> str:
    return f"flow-anomaly bag play {bag} --start {max(0.0, offset_s - PLAY_LEAD_S):.1f}"


def _signal_of(feature: str) -> str:
    """``imu.accel_x:log_std`` -> ``imu.accel_x`` (the signal or check a feature belongs to)."""
    return feature.split(":", 1)[0]


# ----------------------------------------------------------------------------------------------------------------
# Time series
# ----------------------------------------------------------------------------------------------------------------
def timeseries_review(
    bag: Path, models: FleetModels, options: EvalOptions, bag_start_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``ts score``'s summary plus status times, and the alarm / data-quality events of the bag."""
    from flow_anomaly_ros.demo.cores import window_geometry
    from flow_anomaly_ros.timeseries.bag_training import score_bag
    from flow_anomaly_ros.timeseries.status import INVALID_INPUT, STALE_INPUT, STATUS_NAMES

    results, summary = score_bag(
        models.ts_model, bag, [options.imu_topic], options.can_topic, top=max(1, options.top_signals)
    )
    _, stride_s = window_geometry(models.ts_model)
    status = np.array([r.status for r in results], np.int64)
    codes, counts = np.unique(status, return_counts=True)
    summary["status_time_s"] = {STATUS_NAMES[int(c)]: float(n * stride_s) for c, n in zip(codes, counts, strict=True)}
    events: list[dict[str, Any]] = []
    for a, b in _runs(np.array([r.is_anomaly for r in results], bool)):
        win = results[a : b + 1]
        contrib: dict[str, float] = defaultdict(float)
        for r in win:
            for name, c in zip(r.feature_names, r.contributions, strict=False):
                contrib[_signal_of(name)] += float(c)
        top = sorted(contrib.items(), key=lambda kv: (-kv[1], kv[0]))[: options.top_signals]
        peak = max(win, key=lambda r: r.score if math.isfinite(r.score) else -math.inf)
        events.append(
            {
                "source": "timeseries",
                "kind": "alarm",
                "start_s": win[0].start_s,
                "end_s": win[-1].end_s,
                "peak_s": peak.end_s,
                "peak_score": peak.score,
                "threshold": peak.threshold,
                "windows": len(win),
                "top_signals": [k for k, _ in top],
                "top_contributions": [v for _, v in top],
            }
        )
    for a, b in _runs(np.isin(status, (STALE_INPUT, INVALID_INPUT))):
        win = results[a : b + 1]
        events.append(
            {
                "source": "timeseries",
                "kind": "data_quality",
                "start_s": win[0].start_s,
                "end_s": win[-1].end_s,
                "status": STATUS_NAMES[win[0].status],
                "windows": len(win),
                "reason": win[0].status_message,
            }
        )
    for e in events:
        e["start_offset_s"] = e["start_s"] - bag_start_s
    return summary, events


# ----------------------------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------------------------
def demo_models(models: FleetModels, detector: str) -> Any:
    from flow_anomaly_ros.demo.cores import DemoModels

    return DemoModels(
        ts_models={detector: Path(models.ts_model)},
        seg_model=Path(models.seg_model) if models.seg_model else None,
        deployed_detector=detector,
        seg_backend=models.seg_backend,
        score_method=models.score_method,
        threshold=models.threshold,
        min_region_area=models.min_region_area,
    )


def camera_review(frames: list[Any], bag_start_s: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Camera alarm events (runs of frames with an anomaly region) from the FrameProcessor's per-frame results."""
    flags = np.array([f.is_anomaly for f in frames], bool)
    events = []
    for a, b in _runs(flags):
        run = frames[a : b + 1]
        peaks = [float(np.max(f.scores)) if f.scores is not None else math.nan for f in run]
        i = int(np.nanargmax(peaks)) if np.isfinite(peaks).any() else 0
        events.append(
            {
                "source": "camera",
                "kind": "alarm",
                "start_s": run[0].stamp_ns * 1e-9,
                "end_s": run[-1].stamp_ns * 1e-9,
                "peak_s": run[i].stamp_ns * 1e-9,
                "peak_score": peaks[i],
                "frames": len(run),
                "mask_pixels": int(sum(int(f.mask.sum()) for f in run)),
                "start_offset_s": run[0].stamp_ns * 1e-9 - bag_start_s,
            }
        )
    summary = {"frames": len(frames), "alarm_frames": int(flags.sum()), "alarm_events": len(events)}
    return summary, events


# ----------------------------------------------------------------------------------------------------------------
# The per-bag function
# ----------------------------------------------------------------------------------------------------------------
def _labelled(bag: Path) -> bool:
    from flow_anomaly_ros.demo.recording import GROUND_TRUTH_FILE

    return (bag / GROUND_TRUTH_FILE).is_file() if bag.is_dir() else (bag.parent / GROUND_TRUTH_FILE).is_file()


def _rates(n_events: int, hours: float, km: float | None) -> dict[str, float | None]:
    return {
        "alarms_per_hour": n_events / hours if hours > 0 else None,
        "alarms_per_km": n_events / km if km else None,
    }


def evaluate_bag(job: BagJob, models: FleetModels, options: EvalOptions | None = None) -> dict[str, Any]:
    """Evaluate one bag (see the module docstring); BagEvalError for a bag that cannot be read."""
    from flow_anomaly_ros.demo.evaluate import camera_results, evaluate_offline
    from flow_anomaly_ros.model_store import read_manifest

    options = options or EvalOptions()
    t0 = time.perf_counter()
    bag = check_bag(job.path)
    try:
        start_s, end_s, topics = _bag_span(bag)
    except Exception as exc:  # rosbags raises several types for a truncated / corrupt file
        raise BagEvalError(f"bag {bag} cannot be read (truncated or corrupt?): {type(exc).__name__}: {exc}") from exc
    labelled = _labelled(bag)
    detector = read_manifest(models.ts_model).get("detector", {}).get("name", "realnvp")
    if not isinstance(detector, str):
        detector = "realnvp"
    out: dict[str, Any] = {
        **job.as_dict(),
        "status": "ok",
        "labelled": labelled,
        "start_s": start_s,
        "duration_s": end_s - start_s,
    }
    km = distance_km(bag, options.gps_topic)
    out["distance_km"] = km
    hours = (end_s - start_s) / 3600.0
    ts_summary, events = timeseries_review(bag, models, options, start_s)
    n_ts = sum(1 for e in events if e["kind"] == "alarm")
    out["timeseries"] = {**ts_summary, **_rates(n_ts, hours, km)}
    frames = None
    if labelled and options.metrics:
        ev = evaluate_offline(bag, demo_models(models, detector))
        out["metrics"] = ev.metrics
        frames = ev.camera
    if models.seg_model:
        if frames is None:
            if topics.get(options.camera_topic) != "sensor_msgs/msg/Image":
                out["camera"] = {"skipped": f"no sensor_msgs/Image topic {options.camera_topic} in the bag"}
            else:
                from flow_anomaly_ros.demo.cores import frame_processor

                frames = camera_results(bag, options.camera_topic, frame_processor(demo_models(models, detector)))
        if frames is not None:
            cam, cam_events = camera_review(frames, start_s)
            out["camera"] = {**cam, **_rates(len(cam_events), hours, km)}
            events += cam_events
    events.sort(key=lambda e: (e["start_s"], e["source"], e["kind"]))
    for e in events:
        e["play"] = play_command(job.path, e["start_offset_s"])
    out["events"] = events
    out["run"] = {
        "wall_s": time.perf_counter() - t0,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if frames:
        out["run"]["camera_p50_ms"] = float(np.percentile([f.latency_ms for f in frames], 50))
    return clean_json(out)


def error_result(job: BagJob, message: str) -> dict[str, Any]:
    """The error row of a bag that could not be evaluated."""
    return {**job.as_dict(), "status": "error", "error": message}
