"""rosbag2 tooling: write/read, info, and a byte-for-byte round trip play (this process) -> DDS -> record (another
process), for MCAP and SQLite3. Real rclpy messages, real Fast DDS, real bag files; nothing mocked."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosutil import start_python, stop_process

from flow_anomaly_ros.data.bags import BagError, BagReader, BagWriter, bag_info, cdr_wire_bytes, format_info, make_qos

T0 = 1_700_000_000_000_000_000
TOPICS = {
    "/imu/data": "sensor_msgs/msg/Imu",
    "/can/from_can_bus": "can_msgs/msg/Frame",
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/gps/fix": "sensor_msgs/msg/NavSatFix",
    "/anomaly/score": "flow_anomaly_ros/msg/AnomalyScore",
}


def _stamp(msg, ns: int) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)


def real_messages(n_imu: int = 60, wire: bool = True) -> list[tuple[str, int, bytes]]:
    """Messages of every demo type, serialised by rclpy (real CDR), at realistic rates over ~0.6 s.

    ``wire``: store them as DDS delivers them (padded to 4 bytes, as ``ros2 bag record`` writes them)."""
    from can_msgs.msg import Frame
    from flow_anomaly_ros.msg import AnomalyScore
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image, Imu, NavSatFix

    rng = np.random.default_rng(0)
    out = []
    for i in range(n_imu):
        ns = T0 + i * 10_000_000
        imu = Imu()
        _stamp(imu, ns)
        imu.header.frame_id = "imu_link"
        imu.linear_acceleration.x, imu.linear_acceleration.y, imu.linear_acceleration.z = rng.normal(size=3).tolist()
        imu.angular_velocity.z = float(rng.normal())
        out.append(("/imu/data", ns, bytes(serialize_message(imu))))
        for k in range(3):
            frame = Frame()
            _stamp(frame, ns + k * 3_000_000)
            frame.header.frame_id = "can0"
            frame.id = int(rng.integers(0, 0x7FF))
            frame.dlc = 8
            frame.data = rng.integers(0, 256, 8).astype(np.uint8).tolist()
            out.append(("/can/from_can_bus", ns + k * 3_000_000, bytes(serialize_message(frame))))
        if i % 10 == 0:
            img = Image()
            _stamp(img, ns)
            img.header.frame_id = "camera"
            img.height, img.width, img.encoding, img.step = 24, 32, "rgb8", 96
            img.data = rng.integers(0, 256, 24 * 32 * 3).astype(np.uint8).tobytes()
            out.append(("/camera/image_raw", ns, bytes(serialize_message(img))))
            score = AnomalyScore()
            _stamp(score, ns)
            score.score, score.threshold, score.feature_names = 1.5, 2.0, ["accel_x", "wheel_speed_fl"]
            score.feature_contributions = [0.25, 0.75]
            out.append(("/anomaly/score", ns, bytes(serialize_message(score))))
        if i % 30 == 0:
            fix = NavSatFix()
            _stamp(fix, ns)
            fix.latitude, fix.longitude, fix.altitude = 49.0 + i * 1e-6, 8.4, 112.0
            out.append(("/gps/fix", ns, bytes(serialize_message(fix))))
    out.sort(key=lambda m: m[1])
    return [(t, ns, cdr_wire_bytes(d)) for t, ns, d in out] if wire else out


def write_bag(path: Path, storage: str, messages: list[tuple[str, int, bytes]]) -> None:
    with BagWriter(path, storage=storage) as w:
        for topic, msgtype in TOPICS.items():
            w.add_topic(topic, msgtype, [make_qos(reliable=True, depth=100)])
        for topic, ns, data in messages:
            w.write(topic, ns, data)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_written_bag_reads_back_identical_bytes(tmp_path, storage):
    msgs = real_messages(20)
    write_bag(tmp_path / "bag", storage, msgs)
    with BagReader(tmp_path / "bag") as bag:
        got = [(m.topic, m.stamp_ns, m.data) for m in bag.messages()]
        assert bag.topics() == TOPICS
    assert sorted(got, key=lambda m: (m[1], m[0])) == sorted(msgs, key=lambda m: (m[1], m[0]))
    # the plain rosbags Reader (what other tools use) agrees, and rclpy deserialises the stored bytes
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Imu

    with Reader(tmp_path / "bag") as r:
        assert r.message_count == len(msgs)
        raw = next(raw for c, _, raw in r.messages() if c.topic == "/imu/data")
    assert deserialize_message(bytes(raw), Imu).header.frame_id == "imu_link"


def test_decode_without_rclpy_matches_rclpy(tmp_path):
    from can_msgs.msg import Frame
    from rclpy.serialization import deserialize_message

    write_bag(tmp_path / "bag", "mcap", real_messages(5))
    with BagReader(tmp_path / "bag") as bag:
        m = next(bag.messages(["/can/from_can_bus"]))
        ours = bag.decode(m)
        theirs = deserialize_message(m.data, Frame)
    assert ours.id == theirs.id and list(ours.data) == list(theirs.data) and ours.dlc == 8


def test_info_reports_counts_types_and_duration(tmp_path):
    msgs = real_messages(40)
    write_bag(tmp_path / "bag", "sqlite3", msgs)
    info = bag_info(tmp_path / "bag")
    counts = {t.name: t.count for t in info.topics}
    assert counts["/imu/data"] == 40 and counts["/can/from_can_bus"] == 120 and counts["/gps/fix"] == 2
    assert {t.name: t.msgtype for t in info.topics} == TOPICS
    assert info.storage == "sqlite3" and info.message_count == len(msgs)
    assert info.duration_s == pytest.approx((msgs[-1][1] - msgs[0][1]) / 1e9, abs=1e-6)
    text = format_info(info)
    assert "Storage id:        sqlite3" in text and "Type: can_msgs/msg/Frame | Count: 120" in text
    cli = subprocess.run(
        [sys.executable, "-m", "flow_anomaly_ros.cli", "bag", "info", str(tmp_path / "bag")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Topic: /imu/data" in cli.stdout and f"Messages:          {len(msgs)}" in cli.stdout


def test_bad_bags_fail_with_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        BagReader(tmp_path / "missing")
    write_bag(tmp_path / "bag", "mcap", real_messages(2))
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "bag")
    with pytest.raises(BagError, match="unknown storage"):
        BagWriter(tmp_path / "other", storage="rosbag1")
    with BagWriter(tmp_path / "x") as w, pytest.raises(BagError, match="no definition"):
        w.add_topic("/t", "nonexistent_msgs/msg/Nope")
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:300])  # truncated storage file
    with pytest.raises((BagError, FileNotFoundError)), BagReader(tmp_path / "bag") as bag:
        list(bag.messages())
    cli = subprocess.run(
        [sys.executable, "-m", "flow_anomaly_ros.cli", "bag", "info", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and "does not exist" in cli.stderr


@pytest.mark.parametrize(("source", "recorded"), [("mcap", "sqlite3"), ("sqlite3", "mcap")])
def test_play_record_round_trip_is_byte_for_byte(tmp_path, ros_node, source, recorded):
    from flow_anomaly_ros.ros.bag_player import BagPlayer

    msgs = real_messages(60)
    write_bag(tmp_path / "src", source, msgs)
    out = tmp_path / "rec"
    rec = start_python(
        ["-m", "flow_anomaly_ros.cli", "bag", "record", str(out), "--storage", recorded, "--topics"]
        + [f"{t}:={ty}" for t, ty in TOPICS.items()]
    )
    try:
        player = BagPlayer(ros_node, tmp_path / "src", rate=4.0, wait_for_subscribers=1, wait_timeout_s=20.0)
        assert all(p.get_subscription_count() >= 0 for p in player._publishers.values())
        stats = player.play()
        player.wait_for_all_acked(5.0)
        assert stats.total == len(msgs) and not any(stats.failed.values())
        time.sleep(0.5)
    finally:
        log = stop_process(rec, signal.SIGINT, timeout=20)
    assert rec.returncode == 0, log
    with BagReader(out) as bag:
        got = list(bag.messages())
        assert bag.topics() == TOPICS
    for topic in TOPICS:
        sent = [d for t, _, d in msgs if t == topic]
        received = [m.data for m in got if m.topic == topic]
        assert received == sent, f"{topic}: {len(received)} of {len(sent)} messages, or bytes differ\n{log}"
    assert bag_info(out).storage == recorded
    player.close()


def test_unpadded_cdr_arrives_with_only_zero_alignment_padding_added(tmp_path, ros_node):
    """rclpy serialises a NavSatFix to 117 bytes; DDS may deliver 120: the same bytes plus zero padding."""
    from rosutil import spin_until
    from sensor_msgs.msg import NavSatFix

    from flow_anomaly_ros.ros.bag_player import BagPlayer

    msgs = [m for m in real_messages(60, wire=False) if m[0] == "/gps/fix"]
    assert len(msgs[0][2]) % 4 != 0
    with BagWriter(tmp_path / "src") as w:
        w.add_topic("/gps/fix", "sensor_msgs/msg/NavSatFix")
        for t, ns, d in msgs:
            w.write(t, ns, d)
    got: list[bytes] = []
    ros_node.create_subscription(NavSatFix, "/gps/fix", got.append, 10, raw=True)
    player = BagPlayer(ros_node, tmp_path / "src", rate=10.0, wait_for_subscribers=1)
    player.play()
    assert spin_until(ros_node, lambda: len(got) == len(msgs), timeout=10)
    for (_, _, sent), received in zip(msgs, got, strict=True):
        # same-process delivery passes the 117 bytes through; the SHM/UDP transports pad to 120 (see the
        # cross-process round trip above): content identical, at most the alignment padding added, all zero.
        assert received[: len(sent)] == sent and len(received) in (len(sent), len(cdr_wire_bytes(sent)))
        assert not any(received[len(sent) :])
    player.close()


def test_play_follows_rate_clock_topics_and_loop(tmp_path, ros_node):
    """--rate scales spacing, --clock publishes bag time, --topics filters, --loop repeats."""
    from rosgraph_msgs.msg import Clock
    from rosutil import spin_until
    from sensor_msgs.msg import Imu

    from flow_anomaly_ros.ros.bag_player import BagPlayer

    msgs = real_messages(60)  # 0.59 s of bag time
    write_bag(tmp_path / "src", "mcap", msgs)
    clocks: list[int] = []
    imu_wall: list[float] = []
    ros_node.create_subscription(Clock, "/clock", lambda m: clocks.append(m.clock.sec * 10**9 + m.clock.nanosec), 50)
    ros_node.create_subscription(Imu, "/imu_remapped", lambda m: imu_wall.append(time.monotonic()), 200)
    import threading

    player = BagPlayer(
        ros_node,
        tmp_path / "src",
        rate=0.5,
        clock_hz=50.0,
        topics=["/imu/data"],
        remap={"/imu/data": "/imu_remapped"},
        wait_for_subscribers=1,
        loop=True,
    )
    assert list(player._publishers) == ["/imu/data"]
    thread = threading.Thread(target=player.play)
    thread.start()
    assert spin_until(ros_node, lambda: len(imu_wall) >= 90, timeout=20)
    player.stop()
    thread.join(10)
    spin_until(ros_node, lambda: False, timeout=0.3)
    assert player.stats.loops >= 1  # the second pass started: looping works
    first_pass = imu_wall[:60]
    span = first_pass[-1] - first_pass[0]
    assert 0.9 < span < 2.0, f"60 IMU messages 0.59 s apart at rate 0.5 should span ~1.18 s, got {span:.2f}"
    assert len(clocks) >= 20 and min(clocks) >= T0 and max(clocks) <= msgs[-1][1] + 50_000_000
    player.close()


def test_unknown_topic_to_play_is_a_clear_error(tmp_path, ros_node):
    from flow_anomaly_ros.ros.bag_player import BagPlayer

    write_bag(tmp_path / "src", "mcap", real_messages(2))
    with pytest.raises(BagError, match="not in bag"):
        BagPlayer(ros_node, tmp_path / "src", topics=["/nope"])
    with pytest.raises(BagError, match="rate"):
        BagPlayer(ros_node, tmp_path / "src", rate=0)


def test_bag_play_cli_publishes_every_message_and_clock(tmp_path, ros_node):
    """`flow-anomaly bag play BAG --clock --rate 4 --wait-for-subscribers 1` in its own process."""
    from rosgraph_msgs.msg import Clock
    from rosutil import spin_until
    from sensor_msgs.msg import Imu

    msgs = real_messages(40)
    write_bag(tmp_path / "src", "sqlite3", msgs)
    got: list[bytes] = []
    clocks: list[int] = []
    ros_node.create_subscription(Imu, "/imu/data", got.append, 100, raw=True)
    ros_node.create_subscription(Clock, "/clock", lambda m: clocks.append(m.clock.sec * 10**9 + m.clock.nanosec), 50)
    play = start_python(
        [
            "-m",
            "flow_anomaly_ros.cli",
            "bag",
            "play",
            str(tmp_path / "src"),
            "--clock",
            "--rate",
            "4",
            "--topics",
            "/imu/data",
            "--wait-for-subscribers",
            "1",
        ]
    )
    try:
        assert spin_until(ros_node, lambda: len(got) == 40, timeout=30)
        spin_until(ros_node, lambda: play.poll() is not None, timeout=15)
    finally:
        log = stop_process(play)
    assert play.returncode == 0, log
    assert got == [d for t, _, d in msgs if t == "/imu/data"]
    assert clocks and min(clocks) >= T0 and max(clocks) <= msgs[-1][1] + 100_000_000
    assert "played 40 messages" in log
