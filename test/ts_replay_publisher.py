"""Publisher process for the timeseries node tests and benchmark: replays an event file over real DDS.

The replay file (``save_replay``) holds IMU samples and CAN frames in *send order* with their header stamps, so a
test can script anything a bus or a bag throws at the node: KITTI IMU and DBC-generated CAN with injected faults,
NaNs, out-of-order and duplicate stamps, clock jumps, unknown ids, DLC mismatches, error frames, silences and floods.
Messages are built with the node's own conversion modules' inverse (``imu_message``/``can_message``), published
with ``send_t`` spacing divided by ``--speed`` (0 = as fast as possible), after the node's subscriptions matched.

Usage::

    python test/ts_replay_publisher.py EVENTS.npz --imu-topics /imu/data --can-topic /from_can_bus --speed 4
    python test/ts_replay_publisher.py EVENTS.npz --stamp-now ...   # header stamps = publish time (benchmark)

Prints one line ``SENT imu=N can=M late_ms_max=X`` at the end (the test and the benchmark read it).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import numpy as np


def save_replay(path: Path, events: np.ndarray, send_t: np.ndarray | None = None, is_rtr=None) -> None:
    """Write a replay file: core events (``timeseries.events.EVENT_DTYPE``) in send order, their send times
    (default: the stamps) and an optional remote-frame flag per row."""
    from flow_anomaly_ros.timeseries.events import EVENT_DTYPE

    events = np.asarray(events, dtype=EVENT_DTYPE)
    send_t = events["stamp"].copy() if send_t is None else np.asarray(send_t, dtype=np.float64)
    rtr = np.zeros(len(events), bool) if is_rtr is None else np.asarray(is_rtr, dtype=bool)
    np.savez(path, events=events, send_t=send_t, is_rtr=rtr)


def load_replay(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from flow_anomaly_ros.timeseries.events import EVENT_DTYPE

    with np.load(path, allow_pickle=False) as z:
        events, send_t, rtr = z["events"], z["send_t"], z["is_rtr"]
    if events.dtype != EVENT_DTYPE:
        raise ValueError(f"{path}: events have dtype {events.dtype}, expected {EVENT_DTYPE}")
    return events, send_t, rtr


def quantised(events: np.ndarray) -> np.ndarray:
    """``events`` with stamps as the node reads them back from ``builtin_interfaces/Time`` (nanoseconds)."""
    from flow_anomaly_ros.ros.imu_conversion import roundtrip_seconds

    events = events.copy()
    events["stamp"] = [roundtrip_seconds(float(s)) for s in events["stamp"]]
    return events


def train_tiny_model(config, train_events: np.ndarray, calibrate_events: np.ndarray, out_dir: Path) -> Path:
    """A small RealNVP time-series model trained with the core's API in seconds (tests and benchmark only).

    Fitted on ``train_events`` (windows every 0.05 s), threshold at the 0.99 quantile of the clean
    ``calibrate_events`` windows, saved as a model directory.
    """
    from flow_anomaly_ros.timeseries.detectors import make_detector
    from flow_anomaly_ros.timeseries.normalise import RobustNormaliser
    from flow_anomaly_ros.timeseries.pipeline import TimeseriesModel, featurize_recording, stack_features

    x_train, _ = stack_features(featurize_recording(config, train_events, stride_s=0.05))
    x_cal, _ = stack_features(featurize_recording(config, calibrate_events))
    normaliser = RobustNormaliser.fit(x_train)
    detector = make_detector(
        "realnvp", num_layers=2, hidden_features=32, num_blocks_per_layer=1, epochs=8, batch_size=256, seed=0
    )
    detector.fit(normaliser.transform(x_train))
    detector.calibrate(normaliser.transform(x_cal), method="quantile", quantile=0.99)
    return TimeseriesModel(config, normaliser, detector).save(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("events", type=Path)
    parser.add_argument("--imu-topics", nargs="+", default=["imu/data"])
    parser.add_argument("--can-topic", default="from_can_bus")
    parser.add_argument("--qos", default="sensor_data", help="sensor_data | reliable | best_effort")
    parser.add_argument("--depth", type=int, default=0, help="QoS history depth (0: profile default)")
    parser.add_argument("--speed", type=float, default=1.0, help="time scale of send_t (0: as fast as possible)")
    parser.add_argument("--stamp-now", action="store_true", help="header stamps = wall clock at publish")
    parser.add_argument("--clock", action="store_true", help="publish /clock from the stamps (bag play --clock)")
    parser.add_argument("--clock-tail", type=float, default=0.0, help="keep /clock running S seconds after the end")
    parser.add_argument("--wait-subscribers", type=float, default=20.0, help="seconds to wait for subscribers")
    parser.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after the last message")
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.serialization import serialize_message
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Imu

    from flow_anomaly_ros.ros.can_conversion import can_message, frame_type
    from flow_anomaly_ros.ros.imu_conversion import imu_message, seconds_to_stamp
    from flow_anomaly_ros.ros.qos import qos_from_name
    from flow_anomaly_ros.timeseries.events import KIND_IMU

    ev, send_t, rtr = load_replay(args.events)
    rclpy.init()
    node = rclpy.create_node("ts_replay_publisher")
    qos = qos_from_name(args.qos, args.depth or None)
    frame_cls = frame_type()
    imu_pubs = [node.create_publisher(Imu, t, qos) for t in args.imu_topics]
    can_pub = node.create_publisher(frame_cls, args.can_topic, qos)
    clock_pub = node.create_publisher(Clock, "/clock", 10) if args.clock else None
    used = {int(s) for s in ev["source"][ev["kind"] == KIND_IMU]}
    needed = [imu_pubs[i] for i in used] + ([can_pub] if (ev["kind"] != KIND_IMU).any() else [])
    deadline = time.monotonic() + args.wait_subscribers
    while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in needed):
        time.sleep(0.05)
    if any(p.get_subscription_count() == 0 for p in needed):
        print("no subscriber matched", file=sys.stderr)
    time.sleep(0.3)  # let both sides finish matching (reliable history starts empty)

    # Build and serialize every message up front so the send loop only publishes bytes, as a C++ driver such as
    # ros2_socketcan would (Python message conversion on each publish would make this process, not the node under
    # test, the main CPU load of a benchmark on a small machine).
    msgs = []
    for e, is_rtr in zip(ev, rtr):
        if e["kind"] == KIND_IMU:
            msgs.append((imu_pubs[int(e["source"])], imu_message(float(e["stamp"]), e["accel"], e["gyro"])))
        else:
            m = can_message(
                frame_cls,
                float(e["stamp"]),
                int(e["can_id"]),
                e["data"].tobytes(),
                int(e["dlc"]),
                bool(e["is_error"]),
                bool(e["is_extended"]),
            )
            m.is_rtr = bool(is_rtr)
            msgs.append((can_pub, m))
    little_endian_cdr = all(bytes(serialize_message(m)[:2]) == b"\x00\x01" for _, m in msgs[:1])
    msgs = [(pub, serialize_message(m)) for pub, m in msgs]
    send_t = send_t - send_t[0] if len(send_t) else send_t
    counts = {"imu": 0, "can": 0}
    late_max = 0.0
    clock = node.get_clock()
    t0 = time.perf_counter()
    last_clock = -np.inf

    def publish_clock(stamp_s: float) -> None:
        nonlocal last_clock
        if clock_pub is not None and abs(stamp_s - last_clock) >= 0.01:  # 100 Hz at most, jumps back included
            clock_pub.publish(Clock(clock=seconds_to_stamp(stamp_s)))
            last_clock = stamp_s

    for (pub, msg), t_rel, stamp in zip(msgs, send_t, ev["stamp"]):
        if args.speed > 0:
            target = t0 + t_rel / args.speed
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # no busy-wait: it would take a CPU from the node under test
            late_max = max(late_max, time.perf_counter() - target)
        if args.stamp_now:  # header.stamp is the first field of both Imu and Frame: right after the CDR header
            if not little_endian_cdr:
                raise SystemExit("--stamp-now needs little-endian CDR")
            buf = bytearray(msg)
            sec, nanosec = divmod(clock.now().nanoseconds, 1_000_000_000)
            struct.pack_into("<iI", buf, 4, sec, nanosec)
            msg = bytes(buf)
        publish_clock(float(stamp))
        pub.publish(msg)
        counts["imu" if pub is not can_pub else "can"] += 1
    if clock_pub is not None and len(ev):
        t_end, t_last = time.perf_counter(), last_clock
        while (elapsed := time.perf_counter() - t_end) < args.clock_tail:
            publish_clock(t_last + elapsed * (args.speed or 1.0))
            time.sleep(0.01)
    time.sleep(args.linger)
    print(f"SENT imu={counts['imu']} can={counts['can']} late_ms_max={late_max * 1e3:.2f}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
