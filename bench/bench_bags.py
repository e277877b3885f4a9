"""rosbag2 tooling: write/read throughput per storage (MCAP vs SQLite3) and what the bag player sustains over DDS.

Rows: writing and reading the demo's message mix (IMU 100 Hz, CAN ~500 frames/s, 256x128 rgb8 images at 2 Hz)
through ``flow_anomaly_ros.data.bags``; and the player publishing a bag of small messages as fast as it can
(``--rate`` very high) versus at the recorded rate (worst lag behind schedule), with a subscriber in another
process counting what arrives. Ratios are against MCAP in the same run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, parser, write_result

from flow_anomaly_ros.data.bags import BagReader, BagWriter, make_qos


def _messages(seconds: float) -> list[tuple[str, int, object, str]]:
    from flow_anomaly_ros.data.bags import registry

    reg = registry()
    Imu = reg.message_class("sensor_msgs/msg/Imu")
    Frame = reg.message_class("can_msgs/msg/Frame")
    Image = reg.message_class("sensor_msgs/msg/Image")
    Header = reg.message_class("std_msgs/msg/Header")
    Time = reg.message_class("builtin_interfaces/msg/Time")
    V3 = reg.message_class("geometry_msgs/msg/Vector3")
    Q = reg.message_class("geometry_msgs/msg/Quaternion")
    rng = np.random.default_rng(0)
    out = []
    t0 = 1_700_000_000_000_000_000
    for i in range(int(seconds * 100)):
        ns = t0 + i * 10_000_000
        h = Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="imu")
        v = V3(x=float(rng.normal()), y=0.0, z=9.8)
        out.append(("/imu", ns, Imu(h, Q(0.0, 0.0, 0.0, 1.0), np.zeros(9), v, np.zeros(9), v, np.zeros(9)), "Imu"))
        for k in range(5):
            data = rng.integers(0, 256, 8).astype(np.uint8)
            out.append(("/can", ns + k * 2_000_000, Frame(h, 0xAA, False, False, False, 8, data), "Frame"))
        if i % 50 == 0:
            img = rng.integers(0, 256, 128 * 256 * 3).astype(np.uint8)
            out.append(("/image", ns, Image(h, 128, 256, "rgb8", 0, 768, img), "Image"))
    return out


TYPES = {"Imu": "sensor_msgs/msg/Imu", "Frame": "can_msgs/msg/Frame", "Image": "sensor_msgs/msg/Image"}


def bench_storage(msgs: list, storage: str, tmp: Path) -> dict[str, float]:
    path = tmp / f"bag_{storage}"
    t0 = time.perf_counter()
    with BagWriter(path, storage=storage) as w:
        for topic, kind in (("/imu", "Imu"), ("/can", "Frame"), ("/image", "Image")):
            w.add_topic(topic, TYPES[kind], [make_qos(True, depth=100)])
        for topic, ns, msg, _ in msgs:
            w.write_message(topic, ns, msg)
    write_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in path.iterdir())
    t0 = time.perf_counter()
    with BagReader(path) as r:
        n = sum(1 for _ in r.messages())
    read_s = time.perf_counter() - t0
    return {"write_s": write_s, "read_s": read_s, "n": n, "mb": size / 1e6}


def bench_player(tmp: Path, seconds: float) -> list[list[object]]:
    """Player over DDS into a subscriber process: max rate and at the recorded rate."""
    import os
    import subprocess

    import rclpy

    from flow_anomaly_ros.ros.bag_player import BagPlayer

    path = tmp / "small"
    with BagWriter(path) as w:
        w.add_topic("/imu", "sensor_msgs/msg/Imu", [make_qos(True, depth=1000)])
        for topic, ns, msg, kind in _messages(seconds):
            if kind == "Imu":
                w.write_message(topic, ns, msg)
    n = int(seconds * 100)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    sub_code = (
        "import rclpy,sys,time\nfrom sensor_msgs.msg import Imu\nrclpy.init()\nn=rclpy.create_node('bench_sub')\n"
        "c=[0]\nn.create_subscription(Imu,'/imu',lambda m:c.__setitem__(0,c[0]+1),1000)\n"
        f"end=time.time()+60\nwhile c[0]<{n} and time.time()<end: rclpy.spin_once(n,timeout_sec=0.05)\n"
        "print(c[0],flush=True)\n"
    )
    rows = []
    for label, rate in (("recorded rate (1x)", 1.0), ("as fast as possible (1000x)", 1000.0)):
        sub = subprocess.Popen([sys.executable, "-c", sub_code], env=env, stdout=subprocess.PIPE, text=True)
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        node = rclpy.create_node("bench_player", context=ctx)
        player = BagPlayer(node, path, rate=rate, wait_for_subscribers=1, wait_timeout_s=30)
        stats = player.play()
        player.wait_for_all_acked(5.0)
        got = int((sub.communicate(timeout=90)[0] or "0").strip() or 0)
        rows.append([label, n, stats.wall_s, n / stats.wall_s, stats.max_lag_ms, got])
        player.close()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return rows


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    seconds = 10.0 if args.quick else 60.0
    tmp = Path(tempfile.mkdtemp(prefix="bench_bags_"))
    try:
        msgs = _messages(seconds)
        res = {s: bench_storage(msgs, s, tmp) for s in ("mcap", "sqlite3")}
        base = res["mcap"]
        rows = [
            [
                s,
                r["n"],
                r["mb"],
                r["n"] / r["write_s"],
                r["n"] / r["read_s"],
                base["write_s"] / r["write_s"],
                base["read_s"] / r["read_s"],
            ]
            for s, r in res.items()
        ]
        body = f"Demo message mix, {seconds:.0f} s of bag time ({len(msgs)} messages).\n\n"
        body += markdown_table(
            ["storage", "messages", "MB", "write msg/s", "read msg/s", "write speed vs MCAP", "read speed vs MCAP"],
            rows,
        )
        body += "\nBag player over DDS (sensor_msgs/Imu, subscriber in another process):\n\n"
        body += markdown_table(
            ["playback", "messages", "wall s", "published msg/s", "worst lag ms", "received"],
            bench_player(tmp, seconds / 2),
        )
        write_result(args.out, "rosbag2 tooling (rosbags): storage throughput and player", body)
        print(args.out.read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
