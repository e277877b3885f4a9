"""``flow-anomaly demo make-bag``: the demo rosbag2 with labelled anomalies in every stream, and its ground truth.

What is real and what is not (stated again in the report and docs/demo.md):
- **IMU** (``/imu/data``, sensor_msgs/Imu, 100 Hz): the real KITTI raw-drive accelerometer and gyroscope shipped in
  gtsam's example data (CC BY-NC-SA 3.0, Geiger et al. 2013), later part of the drive; faults are **injected**.
- **GPS** (``/gps/fix``, sensor_msgs/NavSatFix, 1 Hz): the real KITTI fixes of the same drive, given in the file as
  local XYZ metres; converted to latitude/longitude around a documented origin (``config.GPS_ORIGIN_*``, in
  Karlsruhe where KITTI was recorded; the file has no geodetic origin); GPS jumps are **injected**.
- **CAN** (``/from_can_bus``, can_msgs/Frame): **generated** from a real opendbc DBC at the DBC's message periods,
  with signal values driven by the real KITTI motion; attacks (flood, fuzzing, spoofing, replay, suspension) are
  **injected**. No real CAN recording ships with any package reachable here.
- **Camera** (``/camera/image_raw``, sensor_msgs/Image rgb8): **generated** procedural street scenes with exact
  labels; anomalous objects (crates, cones, animals, debris, balls) are drawn into a share of the frames.

The ground truth goes beside the messages, inside the bag directory (``ros2 bag`` ignores extra files):
``ground_truth.json`` (fault intervals per stream, per-frame camera facts, provenance) and ``camera_labels.npz``
(per-pixel anomaly masks). ``metadata.yaml``'s custom_data points at them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.data.bags import BagWriter, make_qos
from flow_anomaly_ros.data.kitti import GPS_SIGMA_M, local_to_geodetic
from flow_anomaly_ros.demo import config as C
from flow_anomaly_ros.demo.config import DemoConfig
from flow_anomaly_ros.demo.timeseries_source import TimeseriesStreams, build_streams

GROUND_TRUTH_FILE = "ground_truth.json"
CAMERA_LABELS_FILE = "camera_labels.npz"
GROUND_TRUTH_VERSION = 1
NS = 1_000_000_000


@dataclass
class CameraFrame:
    stamp_s: float
    image: np.ndarray  # (H, W, 3) uint8
    anomaly_mask: np.ndarray  # (H, W) bool
    kinds: list[str]
    seed: int


def _stamp(cls_time: Any, t_s: float) -> Any:
    ns = max(0, round(t_s * NS))
    return cls_time(sec=ns // NS, nanosec=ns % NS)


class _Messages:
    """Builds rosbags message objects of the demo's types (ROS-free)."""

    def __init__(self, writer: BagWriter) -> None:
        self.w = writer
        get = writer.message_class
        self.Time = get("builtin_interfaces/msg/Time")
        self.Header = get("std_msgs/msg/Header")
        self.Imu = get("sensor_msgs/msg/Imu")
        self.Vector3 = get("geometry_msgs/msg/Vector3")
        self.Quaternion = get("geometry_msgs/msg/Quaternion")
        self.Image = get("sensor_msgs/msg/Image")
        self.NavSatFix = get("sensor_msgs/msg/NavSatFix")
        self.NavSatStatus = get("sensor_msgs/msg/NavSatStatus")
        self.Frame = get("can_msgs/msg/Frame")

    def header(self, t_s: float, frame_id: str) -> Any:
        return self.Header(stamp=_stamp(self.Time, t_s), frame_id=frame_id)

    def imu(self, t_s: float, accel: np.ndarray, gyro: np.ndarray) -> Any:
        orient_cov = np.zeros(9)
        orient_cov[0] = -1.0  # orientation not provided (REP 145)
        return self.Imu(
            header=self.header(t_s, "imu_link"),
            orientation=self.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=orient_cov,
            angular_velocity=self.Vector3(x=float(gyro[0]), y=float(gyro[1]), z=float(gyro[2])),
            angular_velocity_covariance=np.zeros(9),
            linear_acceleration=self.Vector3(x=float(accel[0]), y=float(accel[1]), z=float(accel[2])),
            linear_acceleration_covariance=np.zeros(9),
        )

    def can(self, event: tuple[float, int, bytes, int, bool, bool]) -> Any:
        t_s, can_id, data, dlc, is_error, is_extended = event
        payload = np.zeros(8, np.uint8)
        raw = bytes(data)[:8]
        payload[: len(raw)] = np.frombuffer(raw, np.uint8)
        return self.Frame(
            header=self.header(t_s, "can0"),
            id=int(can_id),
            is_rtr=False,
            is_extended=bool(is_extended),
            is_error=bool(is_error),
            dlc=int(dlc),
            data=payload,
        )

    def image(self, t_s: float, rgb: np.ndarray) -> Any:
        h, w = rgb.shape[:2]
        return self.Image(
            header=self.header(t_s, "camera"),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=w * 3,
            data=np.ascontiguousarray(rgb, np.uint8).reshape(-1),
        )

    def fix(self, t_s: float, lat_lon_alt: np.ndarray, sigma_m: float = GPS_SIGMA_M) -> Any:
        cov = np.zeros(9)
        cov[0] = cov[4] = sigma_m**2
        cov[8] = (2 * sigma_m) ** 2
        return self.NavSatFix(
            header=self.header(t_s, "gps"),
            status=self.NavSatStatus(status=0, service=1),  # STATUS_FIX, SERVICE_GPS
            latitude=float(lat_lon_alt[0]),
            longitude=float(lat_lon_alt[1]),
            altitude=float(lat_lon_alt[2]),
            position_covariance=cov,
            position_covariance_type=2,  # COVARIANCE_TYPE_DIAGONAL_KNOWN
        )


def camera_frames(cfg: DemoConfig, t0_s: float, duration_s: float) -> list[CameraFrame]:
    """Generated street scenes at ``cfg.camera_hz``; anomalous objects in ``camera_anomaly_fraction`` of them.

    Anomalous frames come in short episodes (an object on the road for 2-4 consecutive frames), like a real
    obstacle seen while driving past; the scenes themselves are independent (the generator does not animate).
    """
    from flow_anomaly_ros.data.street_scenes import generate_scene, scene_seed

    n = max(1, int(duration_s * cfg.camera_hz))
    rng = np.random.default_rng([cfg.seed, 7])
    anomalous = np.zeros(n, bool)
    target = round(cfg.camera_anomaly_fraction * n)
    start = 1
    while anomalous.sum() < target and start < n:
        start += int(rng.integers(1, 5))
        length = int(rng.integers(2, 5))
        anomalous[start : min(n, start + length)] = True
        start += length
    frames = []
    for i in range(n):
        count = int(rng.integers(1, 3)) if anomalous[i] else 0
        for attempt in range(8):  # an object hidden behind a nearer car leaves no visible pixel: redraw the scene
            seed = scene_seed(cfg.seed + 1000 + 100_000 * attempt, i)
            scene = generate_scene(cfg.camera_height, cfg.camera_width, seed, num_anomalies=count)
            if not count or scene.anomaly_mask.any():
                break
        stamp = t0_s + (i + 0.5) / cfg.camera_hz
        kinds = scene.anomaly_kinds if scene.anomaly_mask.any() else []
        frames.append(CameraFrame(stamp, scene.image, scene.anomaly_mask, kinds, seed))
    return frames


def timeseries_streams(cfg: DemoConfig) -> TimeseriesStreams:
    """The real KITTI IMU/GPS and the DBC-generated CAN of the test split, with labelled injected faults.

    Integration point with the time-series core (issue 3): loading, CAN generation and injection all come from
    ``flow_anomaly_ros.data`` so that the demo, ``flow-anomaly ts`` and the node see the same data.
    """
    return build_streams(cfg)


def make_demo_bag(
    out: str | Path,
    cfg: DemoConfig | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Write the demo bag to ``out`` (a new directory) and return the ground truth written beside it."""
    cfg = cfg or DemoConfig()
    out = Path(out)
    say = progress or (lambda stage, frac: None)
    say("loading KITTI drive, generating CAN, injecting faults", 0.0)
    ts = timeseries_streams(cfg)
    t0, t1 = float(ts.imu_t[0]), float(ts.imu_t[-1])
    say("generating camera frames", 0.25)
    frames = camera_frames(cfg, t0, t1 - t0)
    geo = local_to_geodetic(ts.gps_xyz)

    say("writing bag", 0.5)
    deep = make_qos(reliable=True, depth=1000)  # high-rate small messages: deep history, nothing lost on replay
    with BagWriter(out, storage=cfg.storage) as w:
        w.add_topic(C.IMU_TOPIC, "sensor_msgs/msg/Imu", [deep])
        w.add_topic(C.CAN_TOPIC, "can_msgs/msg/Frame", [deep])
        w.add_topic(C.CAMERA_TOPIC, "sensor_msgs/msg/Image", [make_qos(reliable=True, depth=5)])
        w.add_topic(C.GPS_TOPIC, "sensor_msgs/msg/NavSatFix", [make_qos(reliable=True, depth=10)])
        m = _Messages(w)
        events: list[tuple[float, int, str, Any]] = []  # (t, order, topic, payload)
        events += [(float(t), 0, C.IMU_TOPIC, i) for i, t in enumerate(ts.imu_t)]
        events += [(float(e[0]), 1, C.CAN_TOPIC, e) for e in ts.can]
        events += [(f.stamp_s, 2, C.CAMERA_TOPIC, f) for f in frames]
        events += [(float(t), 3, C.GPS_TOPIC, i) for i, t in enumerate(ts.gps_t)]
        events.sort(key=lambda e: (e[0], e[1]))
        for t, _, topic, item in events:
            if topic == C.IMU_TOPIC:
                msg = m.imu(t, ts.accel[item], ts.gyro[item])
            elif topic == C.CAN_TOPIC:
                msg = m.can(item)
            elif topic == C.CAMERA_TOPIC:
                msg = m.image(t, item.image)
            else:
                msg = m.fix(t, geo[item])
            w.write_message(topic, round(t * NS), msg)
        counts = dict(w.counts)

    say("writing ground truth", 0.9)
    truth = {
        "version": GROUND_TRUTH_VERSION,
        "config": cfg.as_dict(),
        "start_s": t0,
        "end_s": max(t1, frames[-1].stamp_s),
        "topics": {"imu": C.IMU_TOPIC, "can": C.CAN_TOPIC, "camera": C.CAMERA_TOPIC, "gps": C.GPS_TOPIC},
        "message_counts": counts,
        "provenance": {
            "imu": ts.provenance.get("imu", "real: KITTI raw drive (gtsam example data), faults injected"),
            "gps": ts.provenance.get("gps", "real: KITTI fixes of the same drive, local XYZ -> WGS84, jumps injected")
            + f"; origin lat {C.GPS_ORIGIN_LAT_DEG}, lon {C.GPS_ORIGIN_LON_DEG}, alt {C.GPS_ORIGIN_ALT_M} m",
            "can": ts.provenance.get("can", "generated from a real opendbc DBC, driven by the KITTI motion"),
            "camera": "generated: procedural street scenes (flow_anomaly_ros.data.street_scenes), anomalous "
            "objects drawn in; exact per-pixel labels",
        },
        "intervals": ts.labels,
        "camera_frames": [
            {
                "index": i,
                "stamp_s": f.stamp_s,
                "anomalous": bool(f.anomaly_mask.any()),
                "kinds": f.kinds,
                "anomaly_pixels": int(f.anomaly_mask.sum()),
                "seed": f.seed,
            }
            for i, f in enumerate(frames)
        ],
        "timeseries": ts.extra,
    }
    (out / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    np.savez_compressed(
        out / CAMERA_LABELS_FILE,
        stamps_ns=np.array([round(f.stamp_s * NS) for f in frames], np.int64),
        masks=np.packbits(np.stack([f.anomaly_mask for f in frames]), axis=-1),
        shape=np.array([cfg.camera_height, cfg.camera_width]),
    )
    say("done", 1.0)
    return truth


def load_ground_truth(bag: str | Path) -> dict[str, Any]:
    """The ground truth stored beside a demo bag; FileNotFoundError naming the file when it is not a demo bag."""
    path = Path(bag) / GROUND_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: evaluation needs the ground truth beside the bag "
            "(make a demo bag with `flow-anomaly demo make-bag OUT`)"
        )
    return json.loads(path.read_text())


def load_camera_labels(bag: str | Path) -> dict[int, np.ndarray]:
    """Per-frame anomaly masks keyed by the image stamp in nanoseconds."""
    data = np.load(Path(bag) / CAMERA_LABELS_FILE)
    h, w = (int(v) for v in data["shape"])
    masks = np.unpackbits(data["masks"], axis=-1, count=w).astype(bool).reshape(-1, h, w)
    return {int(s): m for s, m in zip(data["stamps_ns"], masks, strict=True)}
