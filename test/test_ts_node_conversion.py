"""Message <-> core event conversion of timeseries_anomaly_node (real message types, no DDS needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest


def test_stamp_roundtrip_is_nanosecond_exact_and_idempotent():
    from flow_anomaly_ros.ros.imu_conversion import roundtrip_seconds, seconds_to_stamp, stamp_to_seconds

    for t in (0.0, 90.123456789, 1_796_083_186.796452209, 1e-9):
        stamp = seconds_to_stamp(t)
        assert math.isclose(stamp_to_seconds(stamp), t, rel_tol=1e-15, abs_tol=1e-9)
        assert roundtrip_seconds(roundtrip_seconds(t)) == roundtrip_seconds(t)
    assert seconds_to_stamp(-5.0).sec == 0  # negative clamps


def test_imu_message_carries_si_values_unchanged_and_nan_through():
    from flow_anomaly_ros.ros.imu_conversion import imu_event, imu_message

    msg = imu_message(12.25, (0.1, -9.81, math.nan), (0.01, 0.02, -0.03))
    stamp, accel, gyro = imu_event(msg)
    assert stamp == 12.25 and accel[:2] == (0.1, -9.81) and math.isnan(accel[2]) and gyro == (0.01, 0.02, -0.03)
    assert msg.orientation_covariance[0] == -1.0  # orientation marked "no estimate"
    assert imu_event(msg, stamp_s=99.0)[0] == 99.0  # stamp_source=receipt


def test_can_frame_roundtrip_keeps_dlc_flags_and_payload_length():
    from rclpy.serialization import deserialize_message, serialize_message

    from flow_anomaly_ros.ros.can_conversion import can_event, can_message, frame_type

    frame_cls = frame_type()
    msg = can_message(frame_cls, 5.5, 0xAA, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert can_event(deserialize_message(serialize_message(msg), frame_cls)) == (
        5.5, 0xAA, b"\x01\x02\x03\x04\x05\x06\x07\x08", 8, False, False
    )  # fmt: skip
    short = can_message(frame_cls, 1.0, 0x18FEF100, b"\xff", dlc=4, is_extended=True)  # DLC says 4, payload 1 byte
    assert can_event(short) == (1.0, 0x18FEF100, b"\xff\x00\x00\x00", 4, False, True)
    assert can_event(can_message(frame_cls, 2.0, 0, b"", is_error=True))[4] is True
    with pytest.raises(ValueError, match="at most 8"):
        can_message(frame_cls, 0.0, 1, bytes(9))


def test_serialized_frame_reader_agrees_with_rclpy_on_every_field():
    """The node reads CAN frames from their CDR bytes (can_event_from_cdr); rclpy's deserialisation is the
    reference: every header length (the frame_id string moves the 4-byte alignment), id, flag, DLC and stamp."""
    from rclpy.serialization import deserialize_message, serialize_message

    from flow_anomaly_ros.ros.can_conversion import can_event, can_event_from_cdr, can_message, frame_type

    frame_cls = frame_type()
    rng = np.random.default_rng(0)
    for i in range(300):
        dlc = int(rng.integers(0, 16))  # 9..15: a bad DLC must reach the core as it was sent
        msg = can_message(
            frame_cls,
            float(rng.uniform(0, 2e9)),
            int(rng.integers(0, 1 << 29)),
            rng.integers(0, 256, size=min(dlc, 8), dtype=np.uint8).tobytes(),
            dlc=dlc,
            is_error=bool(rng.integers(2)),
            is_extended=bool(rng.integers(2)),
            frame_id="x" * (i % 9),
        )
        msg.is_rtr = bool(rng.integers(2))
        raw = serialize_message(msg)
        reference = deserialize_message(raw, frame_cls)
        assert can_event_from_cdr(raw, frame_cls) == (can_event(reference), reference.is_rtr)
        assert can_event_from_cdr(raw, frame_cls, stamp_s=7.5)[0][0] == 7.5  # stamp_source=receipt


def test_serialized_frame_reader_handles_big_endian_and_refuses_garbage():
    import struct

    from flow_anomaly_ros.ros.can_conversion import can_event_from_cdr, frame_type

    frame_cls = frame_type()
    # A big-endian CDR frame as another DDS vendor may send it: header, frame_id "can" + NUL, aligned id, flags, DLC.
    header = struct.pack(">iII4s", 12, 500_000_000, 4, b"can\0")
    body = header + struct.pack(">I4B8s", 0x1A0, 0, 1, 0, 3, b"\x01\x02\x03")
    event, is_rtr = can_event_from_cdr(b"\x00\x00\x00\x00" + body, frame_cls)
    assert event == (12.5, 0x1A0, b"\x01\x02\x03", 3, False, True) and not is_rtr
    with pytest.raises(ValueError, match="not a serialized can_msgs/msg/Frame"):
        can_event_from_cdr(b"\x00\x01\x00\x00" + body[:10], frame_cls)  # truncated
    with pytest.raises(ValueError, match="not a serialized can_msgs/msg/Frame"):
        can_event_from_cdr(b"", frame_cls)


def test_replay_events_match_what_the_core_scores_offline():
    """The publisher's messages, converted back by the node's functions, are exactly the core's events."""
    from ts_replay_publisher import quantised

    from flow_anomaly_ros.ros.can_conversion import can_event, can_message, frame_type
    from flow_anomaly_ros.ros.imu_conversion import imu_event, imu_message
    from flow_anomaly_ros.timeseries.events import can_events, concat_events, imu_events

    t = np.arange(5) * 0.01 + 100.0031
    ev = quantised(
        concat_events(
            [
                imu_events(t, np.random.default_rng(0).normal(size=(5, 3)), np.zeros((5, 3))),
                can_events(t + 0.002, np.full(5, 0xB4), np.arange(40).reshape(5, 8), 8),
            ]
        )
    )
    frame_cls = frame_type()
    for e in ev:
        if e["kind"] == 0:
            got = imu_event(imu_message(float(e["stamp"]), e["accel"], e["gyro"]))
            assert got == (float(e["stamp"]), tuple(e["accel"]), tuple(e["gyro"]))
        else:
            m = can_message(frame_cls, float(e["stamp"]), int(e["can_id"]), e["data"].tobytes(), int(e["dlc"]))
            assert can_event(m) == (float(e["stamp"]), int(e["can_id"]), e["data"].tobytes(), 8, False, False)


def test_parameter_file_documents_every_node_parameter_with_valid_defaults():
    import yaml
    from rosutil import REPO

    from flow_anomaly_ros.ros.managed_node import COMMON_PARAMS
    from flow_anomaly_ros.ros.timeseries_node import PARAMS

    doc = yaml.safe_load((REPO / "config" / "timeseries_anomaly.yaml").read_text())
    values = doc["/**/timeseries_anomaly_node"]["ros__parameters"]
    table = {p.name: p for p in (*COMMON_PARAMS, *PARAMS)}
    assert set(values) == set(table)
    for name, value in values.items():
        assert type(value) is type(table[name].default), name  # ROS refuses 1 for a double parameter
        assert table[name].problems(value) == [], name
