"""Evaluate the nodes on a demo bag: offline (their cores on the bag's messages, no DDS) or live (over DDS).

Both modes end in the same :class:`Evaluation` (per-window time-series scores, per-frame camera masks and score
maps, latencies) and go through the same :func:`compute_metrics`, so their numbers are directly comparable:

- **offline**: every message is deserialised with rclpy (no DDS, no ``rclpy.init``) and converted with the nodes'
  own conversion functions; IMU and CAN go into the time-series core's ``score_recording`` (the class the node
  runs), camera frames into the camera node's :class:`FrameProcessor`. Every detector (RealNVP and the paper's
  baselines) is scored here, which gives the detector comparison.
- **live**: the nodes run as processes, the bag is played over DDS at ``rate`` and the nodes' outputs
  (``~/score``, ``~/mask``, ``~/score_map``, ``~/summary``) are recorded into ``<bag>_live_outputs``; only the
  deployed detector (RealNVP) runs live.

Where they can differ, and why: the camera node keeps only the newest frame, so frames arriving while it is busy
are dropped (counted; metrics cover the processed frames); the time-series node drops input when its bounded queue
is full (counted; affected windows come out INVALID_INPUT). With no drops the outputs are identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.data.bags import BagReader
from flow_anomaly_ros.demo import cores
from flow_anomaly_ros.demo.cores import WindowScores
from flow_anomaly_ros.demo.recording import load_camera_labels, load_ground_truth
from flow_anomaly_ros.timeseries.status import INVALID_INPUT, OK, STALE_INPUT

NS = 1_000_000_000
TIMESERIES_STREAMS = ("imu", "can", "gps")  # ground-truth streams the time-series model reads (gps: GNSS stream)


@dataclass
class CameraResult:
    stamp_ns: int
    scores: np.ndarray | None  # H x W float32 anomaly score at the image size
    mask: np.ndarray  # H x W bool
    is_anomaly: bool
    latency_ms: float  # node: receipt -> summary published; offline: FrameProcessor.process time


@dataclass
class Evaluation:
    mode: str  # "offline" | "live"
    bag: Path
    detectors: dict[str, WindowScores]
    camera: list[CameraResult]
    latency: list[dict[str, Any]] = field(default_factory=list)  # rows: stage, p50_ms, p99_ms, count, note
    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    window_geometry: tuple[float, float] = (2.0, 0.1)  # (window_s, stride_s) of the time-series model


def _latency_row(stage: str, samples_ms: list[float] | np.ndarray, note: str = "") -> dict[str, Any]:
    s = np.asarray(samples_ms, np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return {"stage": stage, "p50_ms": float("nan"), "p99_ms": float("nan"), "count": 0, "note": note}
    return {
        "stage": stage,
        "p50_ms": float(np.percentile(s, 50)),
        "p99_ms": float(np.percentile(s, 99)),
        "count": len(s),
        "note": note,
    }


# --------------------------------------------------------------------------------------------------------------
# Offline
# --------------------------------------------------------------------------------------------------------------


def camera_model_summary(model_dir: str | Path) -> dict[str, Any]:
    """Where the camera model came from and how its threshold was chosen (from its manifest), for the report."""
    from flow_anomaly_ros.model_store import read_manifest

    m = read_manifest(model_dir)
    config = (m.get("training") or {}).get("config") or {}
    cal = m.get("threshold_calibration") or {}
    return {
        "base": (config.get("model") or {}).get("weights") or "random initialisation",
        "fine_tuning_steps": (config.get("train") or {}).get("steps"),
        "negatives": "MAF low-likelihood patches" if (config.get("patches") or {}).get("per_image") else "none",
        "threshold": (m.get("thresholds") or {}).get("anomaly_prob"),
        "calibration": {
            k: cal.get(k)
            for k in ("rule", "frames", "frame_alarm_rate", "pixel_rate", "max_position_rate", "min_region_area")
        },
    }


def camera_results(bag: str | Path, topic: str, processor: Any, progress: Any | None = None) -> list[CameraResult]:
    """The camera node's FrameProcessor on every image of ``topic`` (shared by ``evaluate`` and ``fleet``)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from flow_anomaly_ros.ros.image_conversion import image_to_rgb

    camera: list[CameraResult] = []
    with BagReader(bag) as reader:
        for msg in reader.messages([topic]):
            rgb = image_to_rgb(deserialize_message(msg.data, Image))
            t0 = time.perf_counter()
            frame = processor.process(rgb)
            dt_ms = (time.perf_counter() - t0) * 1e3
            camera.append(
                CameraResult(msg.stamp_ns, processor.score_image(frame), frame.mask != 0, bool(frame.regions), dt_ms)
            )
            if progress is not None:
                progress("camera frame", 1)
    return camera


def evaluate_offline(bag: str | Path, models: cores.DemoModels, progress: Any | None = None) -> Evaluation:
    """Run the nodes' cores on every message of ``bag`` (no DDS) and compute the metrics."""
    bag = Path(bag)
    t_start = time.perf_counter()
    truth = load_ground_truth(bag)
    topics = truth["topics"]
    recording = cores.recording_from_bag(bag, topics["imu"], topics["can"], {"gnss": topics["gps"]})
    detectors: dict[str, WindowScores] = {}
    ts_seconds = float("nan")
    for name, model_dir in models.ts_models.items():
        t0 = time.perf_counter()
        detectors[name] = cores.score_recording(model_dir, recording)
        if name == models.deployed_detector:
            ts_seconds = time.perf_counter() - t0
        if progress is not None:
            progress(f"scored {name}", None)
    camera = (  # no camera model: time-series-only evaluation (``fleet evaluate`` without --seg-model)
        camera_results(bag, topics["camera"], cores.frame_processor(models), progress) if models.seg_model else []
    )
    ev = Evaluation("offline", bag, detectors, camera)
    if models.deployed_detector in models.ts_models:
        ev.window_geometry = cores.window_geometry(models.ts_models[models.deployed_detector])
    ev.latency = [
        _latency_row("camera: FrameProcessor.process (inference + scoring)", [c.latency_ms for c in camera]),
    ]
    n_win = len(detectors.get(models.deployed_detector, ()))
    if n_win:
        mean_ms = ts_seconds * 1e3 / n_win
        ev.latency.append(
            {
                "stage": f"time series: {models.deployed_detector} score_recording, per window (mean)",
                "p50_ms": mean_ms,
                "p99_ms": float("nan"),
                "count": n_win,
                "note": "all events pushed + windows scored, divided by windows",
            }
        )
    ev.counts = {"camera_frames": len(camera), "windows": {k: len(v) for k, v in detectors.items()}}
    if models.seg_model is not None:
        ev.counts["camera_model"] = camera_model_summary(models.seg_model)
    ev.metrics = compute_metrics(ev, truth, load_camera_labels(bag), models.deployed_detector)
    ev.wall_s = time.perf_counter() - t_start
    return ev


# --------------------------------------------------------------------------------------------------------------
# Live
# --------------------------------------------------------------------------------------------------------------

TS_NODE = "timeseries_anomaly_node"
CAMERA_NODE = "camera_anomaly_node"
TS_SCORE_TOPIC = f"/{TS_NODE}/score"
CAMERA_OUTPUTS = {
    f"/{CAMERA_NODE}/mask": "sensor_msgs/msg/Image",
    f"/{CAMERA_NODE}/score_map": "sensor_msgs/msg/Image",
    f"/{CAMERA_NODE}/summary": "flow_anomaly_ros/msg/ImageAnomaly",
}


def node_launches(models: cores.DemoModels, topics: dict[str, str]) -> list:
    """The nodes with the demo's parameters (the same values the offline path uses); a node without a model is
    left out (camera-only or time-series-only evaluation)."""
    from flow_anomaly_ros.demo.live import NodeLaunch

    launches = []
    if models.deployed_detector in models.ts_models:
        launches.append(_ts_launch(NodeLaunch, models, topics))
    if models.seg_model is not None:
        launches.append(_camera_launch(NodeLaunch, models, topics))
    return launches


def _ts_launch(NodeLaunch: Any, models: cores.DemoModels, topics: dict[str, str]) -> Any:
    return NodeLaunch(
        TS_NODE,
        "flow_anomaly_ros.ros.timeseries_node",
        {
            "model_dir": str(models.ts_models[models.deployed_detector]),
            "imu_topics": [topics["imu"]],
            "imu_sources": ["imu"],
            "can_topic": topics["can"],
            "stream_topics": [f"gnss={topics['gps']}"],
            "input_qos": "reliable",
            "input_qos_depth": 10000,  # ~10 s of the bag's messages: a starved node catches up instead of losing
            "output_qos": "reliable",
            "output_qos_depth": 1000,
            "retry_period_s": 0.0,
            # a finite replay ends in silence: do not let the node advance time into STALE windows after the bag
            "input_timeout_s": 0.0,
        },
    )


def _camera_launch(NodeLaunch: Any, models: cores.DemoModels, topics: dict[str, str]) -> Any:
    return NodeLaunch(
        CAMERA_NODE,
        "flow_anomaly_ros.ros.camera_node",
        {
            "image_topic": topics["camera"],
            "model_path": str(models.seg_model),
            "backend": models.seg_backend,
            "device": "cpu",
            "score_method": models.score_method,
            "threshold_from_model": models.threshold is None,
            "threshold": float(models.threshold if models.threshold is not None else 0.5),
            "min_region_area": models.min_region_area,
            "publish_overlay": False,
            "publish_score_map": True,
            "output_depth": 100,
            "input_qos": "reliable",
            # evaluation: every frame counts, so frames wait in order instead of the newest replacing them (a CPU
            # stall on a loaded machine otherwise drops frames the offline path scores)
            "input_depth": 32,
            "pending_frames": 32,
        },
    )


def outputs_complete(frames: int, windows: int | None) -> Callable[[dict[str, int]], bool]:
    """Whether a live run's recorded outputs are all in: every camera output of ``frames`` frames (a large mask
    can arrive after the frame's small summary: reliable delivery repeats lost fragments), and ``windows``
    time-series scores (None: unknown, so never complete by count; the replay then waits for the outputs to go
    quiet)."""

    def ready(counts: dict[str, int]) -> bool:
        if windows is None or counts.get(TS_SCORE_TOPIC, 0) < windows:
            return False
        return all(counts.get(topic, 0) >= frames for topic in CAMERA_OUTPUTS) if frames else True

    return ready


def evaluate_live(
    bag: str | Path,
    models: cores.DemoModels,
    *,
    rate: float = 1.0,
    start_nodes: bool = True,
    outputs_bag: str | Path | None = None,
    progress: Any | None = None,
    log_dir: str | Path | None = None,
    expected_windows: int | None = None,
) -> Evaluation:
    """Play ``bag`` through the nodes over DDS, record their outputs and compute the same metrics as offline.

    Recording stops once every output is in (``outputs_complete``); ``expected_windows`` (the offline run's count)
    lets it stop as soon as the last time-series window is, else it waits for the outputs to go quiet."""
    from flow_anomaly_ros.demo.live import replay_and_record
    from flow_anomaly_ros.demo.live import start_nodes as _start

    bag = Path(bag)
    t_start = time.perf_counter()
    truth = load_ground_truth(bag)
    topics = truth["topics"]
    outputs_bag = Path(outputs_bag or bag.with_name(bag.name + "_live_outputs"))
    if outputs_bag.exists():
        import shutil

        shutil.rmtree(outputs_bag)
    n_frames = int(truth["message_counts"].get(topics["camera"], 0))
    launches = node_launches(models, topics)
    running = _start(launches, log_dir) if start_nodes else None
    try:
        run = replay_and_record(
            bag,
            outputs_bag,
            {TS_SCORE_TOPIC: "flow_anomaly_ros/msg/AnomalyScore", **CAMERA_OUTPUTS},
            rate=rate,
            input_topics=[topics["imu"], topics["can"], topics["camera"], topics["gps"]],
            wait_topics=[topics["imu"], topics["can"], topics["camera"], topics["gps"]],
            wait_timeout_s=180.0,
            outputs_ready=outputs_complete(
                n_frames if models.seg_model is not None else 0,
                expected_windows if TS_NODE in {n.name for n in launches} else 0,
            ),
            progress=progress,
        )
    finally:
        if running is not None:
            alive = running.alive()
            running.stop()
            dead = [n for n, ok in alive.items() if not ok]
            if dead:
                logs = running.logs()
                tail = "\n".join(f"--- {n} ---\n{logs[n][-3000:]}" for n in dead)
                raise RuntimeError(f"node(s) {', '.join(dead)} exited during the live run:\n{tail}")
    ev = outputs_to_evaluation(bag, outputs_bag, models, run.publish_wall_ns, topics)
    ev.counts.update({"published": run.published, "recorded": run.recorded, "failed_publishes": run.failed_publishes})
    ev.counts["camera_frames_in_bag"] = n_frames
    ev.metrics = compute_metrics(ev, truth, load_camera_labels(bag), models.deployed_detector)
    ev.wall_s = time.perf_counter() - t_start
    return ev


def _float_image(img: Any) -> np.ndarray:
    """A 32FC1 ``sensor_msgs/Image`` (the camera node's ``~/score_map``) as an H x W float32 array."""
    if img.encoding != "32FC1":
        raise ValueError(f"expected a 32FC1 score map, got encoding {img.encoding!r}")
    dtype = np.dtype(">f4" if img.is_bigendian else "<f4")
    rows = np.frombuffer(img.data, np.uint8).reshape(img.height, img.step)
    return rows[:, : img.width * 4].copy().view(dtype).astype(np.float32).reshape(img.height, img.width)


def outputs_to_evaluation(
    bag: Path,
    outputs_bag: Path,
    models: cores.DemoModels,
    publish_wall_ns: dict[str, dict[int, int]],
    topics: dict[str, str],
) -> Evaluation:
    """Decode the recorded node outputs into an :class:`Evaluation` (metrics not yet computed)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from flow_anomaly_ros.msg import AnomalyScore, ImageAnomaly
    from flow_anomaly_ros.ros.image_conversion import image_to_array

    rows: list[tuple[float, float, float, float, bool, int]] = []
    ts_e2e: list[float] = []
    masks: dict[int, np.ndarray] = {}
    score_maps: dict[int, np.ndarray] = {}
    summaries: dict[int, tuple[bool, float, int]] = {}
    input_stamps = np.array(
        sorted(set(publish_wall_ns.get(topics.get("imu"), {})) | set(publish_wall_ns.get(topics.get("can"), {}))),
        np.int64,
    )
    input_wall = {**publish_wall_ns.get(topics.get("imu"), {}), **publish_wall_ns.get(topics.get("can"), {})}
    cam_wall = publish_wall_ns.get(topics.get("camera"), {})
    with BagReader(outputs_bag) as reader:
        for m in reader.messages():
            if m.topic == TS_SCORE_TOPIC:
                s = deserialize_message(m.data, AnomalyScore)
                end_ns = s.header.stamp.sec * NS + s.header.stamp.nanosec
                start_ns = s.window_start.sec * NS + s.window_start.nanosec
                rows.append((start_ns / NS, end_ns / NS, s.score, s.threshold, bool(s.is_anomaly), int(s.status)))
                i = np.searchsorted(input_stamps, end_ns, side="right") - 1
                if i >= 0:
                    ts_e2e.append((m.stamp_ns - input_wall[int(input_stamps[i])]) / 1e6)
            elif m.topic.endswith("/mask"):
                img = deserialize_message(m.data, Image)
                masks[img.header.stamp.sec * NS + img.header.stamp.nanosec] = image_to_array(img) != 0
            elif m.topic.endswith("/score_map"):
                img = deserialize_message(m.data, Image)
                score_maps[img.header.stamp.sec * NS + img.header.stamp.nanosec] = _float_image(img)
            elif m.topic.endswith("/summary"):
                s = deserialize_message(m.data, ImageAnomaly)
                stamp = s.header.stamp.sec * NS + s.header.stamp.nanosec
                summaries[stamp] = (bool(s.is_anomaly), float(s.latency_ms), m.stamp_ns)
    camera = []
    cam_e2e = []
    for stamp in sorted(summaries):
        is_anom, lat, recv_ns = summaries[stamp]
        if stamp not in masks:
            continue
        camera.append(CameraResult(stamp, score_maps.get(stamp), masks[stamp], is_anom, lat))
        if stamp in cam_wall:
            cam_e2e.append((recv_ns - cam_wall[stamp]) / 1e6)
    detectors = {models.deployed_detector: WindowScores.from_rows(rows)} if models.ts_models else {}
    ev = Evaluation("live", bag, detectors, camera)
    if models.deployed_detector in models.ts_models:
        ev.window_geometry = cores.window_geometry(models.ts_models[models.deployed_detector])
    ev.latency = [
        _latency_row("camera node: receipt -> summary published", [c.latency_ms for c in camera], "ImageAnomaly"),
        _latency_row("camera end to end: image published -> summary received", cam_e2e, "over DDS"),
        _latency_row("time series end to end: newest input in window published -> score received", ts_e2e, "over DDS"),
    ]
    ev.counts = {"camera_frames": len(camera), "windows": {models.deployed_detector: len(rows)}}
    return ev


# --------------------------------------------------------------------------------------------------------------
# Metrics (the time-series and segmentation issues' metric code, applied to the demo's ground truth)
# --------------------------------------------------------------------------------------------------------------


def compute_metrics(
    ev: Evaluation, truth: dict[str, Any], labels: dict[int, np.ndarray], deployed: str
) -> dict[str, Any]:
    """Time-series metrics per detector and camera pixel/frame metrics, over the windows/frames ``ev`` holds."""
    ts_intervals = [iv for iv in truth["intervals"] if iv.get("stream") in TIMESERIES_STREAMS]
    out: dict[str, Any] = {"timeseries": {}, "camera": {}}
    for name, w in ev.detectors.items():
        window_s, stride_s = ev.window_geometry
        out["timeseries"][name] = cores.timeseries_metrics(w, ts_intervals, window_s, stride_s)
    frames = [c for c in ev.camera if c.stamp_ns in labels]
    if frames:
        out["camera"] = cores.camera_metrics(
            [c.scores for c in frames],
            [c.mask for c in frames],
            [labels[c.stamp_ns] for c in frames],
            [c.is_anomaly for c in frames],
        )
        out["camera"]["frames"] = len(frames)
    out["deployed_detector"] = deployed
    return out


def agreement(offline: Evaluation, live: Evaluation) -> dict[str, Any]:
    """How far live outputs are from offline ones, message by message (the explanation for any metric gap)."""
    det = next(iter(live.detectors))
    off, on = offline.detectors.get(det), live.detectors[det]
    out: dict[str, Any] = {"detector": det}
    if off is not None:
        by_end = {round(e * 1e6): i for i, e in enumerate(off.end_s)}
        pairs = [(by_end[round(e * 1e6)], j) for j, e in enumerate(on.end_s) if round(e * 1e6) in by_end]
        out["windows_offline"], out["windows_live"], out["windows_matched"] = len(off), len(on), len(pairs)
        if pairs:
            i, j = (np.array(x) for x in zip(*pairs, strict=True))
            a, b = off.score[i], on.score[j]
            # only OK scores are measurements (AnomalyScore.msg): a window the node marked degraded keeps the score
            # of its incomplete input, which is compared nowhere
            both = np.isfinite(a) & np.isfinite(b) & (off.status[i] == OK) & (on.status[j] == OK)
            out["max_abs_score_diff"] = float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0
            out["windows_ok_in_both"] = int(np.sum((off.status[i] == OK) & (on.status[j] == OK)))
            out["score_nan_pattern_equal"] = bool(np.array_equal(np.isfinite(a), np.isfinite(b)))
            out["decision_agreement"] = float(np.mean(off.is_anomaly[i] == on.is_anomaly[j]))
            out["status_agreement"] = float(np.mean(off.status[i] == on.status[j]))
            # A live window may only differ from offline by the node saying its input was degraded (messages lost
            # or late under CPU starvation: STALE_INPUT / INVALID_INPUT, score NaN); anything else is a bug.
            differ = off.status[i] != on.status[j]
            degraded = np.isin(on.status[j], (STALE_INPUT, INVALID_INPUT))
            out["windows_degraded_live"] = int(np.sum(differ & degraded))
            out["windows_unexplained"] = int(np.sum(differ & ~degraded))
    cam_off = {c.stamp_ns: c for c in offline.camera}
    matched = [(cam_off[c.stamp_ns], c) for c in live.camera if c.stamp_ns in cam_off]
    out["frames_offline"], out["frames_live"], out["frames_matched"] = (
        len(offline.camera),
        len(live.camera),
        len(matched),
    )
    # The camera node keeps only the newest frame: under CPU load it may skip one (counted on its /diagnostics), and
    # DDS may lose one. Such frames are missing, never different: every frame both have must be identical.
    out["frames_missing_live"] = len(offline.camera) - len(matched)
    if matched:
        out["mask_pixel_agreement"] = float(np.mean([np.mean(a.mask == b.mask) for a, b in matched]))
        if out["frames_missing_live"]:
            labels = load_camera_labels(offline.bag)
            both = [(a, b) for a, b in matched if a.stamp_ns in labels]
            if both:
                m_off, m_on = (
                    cores.camera_metrics([c.scores for c in side], [c.mask for c in side],
                                         [labels[c.stamp_ns] for c in side], [c.is_anomaly for c in side])
                    for side in zip(*both, strict=True)
                )  # fmt: skip
                out["camera_metrics_equal_on_matched"] = m_off == m_on
        diffs = [
            float(np.max(np.abs(a.scores - b.scores)))
            for a, b in matched
            if a.scores is not None and b.scores is not None
        ]
        if diffs:
            out["max_abs_score_map_diff"] = max(diffs)
    return out
