"""IMU and CAN messages -> the core's events, for any object with the message's fields (no ROS import).

The live node gets rclpy messages (or, for CAN, the serialized bytes); ``ts train --bag``, ``ts score`` and the
demo's offline evaluation read bags with ``rosbags`` (:meth:`flow_anomaly_ros.data.bags.BagReader.decode`, pure
Python CDR) and get its dataclasses, which carry the same field names. One set of functions serves both, so a bag
read offline gives the node's inputs exactly and ``ts train --bag`` needs no rclpy. The ROS adapters
(``ros.imu_conversion``, ``ros.can_conversion``) import these and add the message builders that need rclpy.

- IMU: ``(stamp_s, accel[3], gyro[3])`` in m/s² and rad/s, the units of ``sensor_msgs/Imu`` (REP 145): a copy.
- CAN: ``(stamp_s, can_id, data[:dlc], dlc, is_error, is_extended)`` of a ros2_socketcan ``can_msgs/Frame``; the
  payload is cut to the DLC so that a DLC that disagrees with the DBC reaches the core's check (see
  ``ros.can_conversion`` for why serialized frames are read with ``struct``: :func:`decode_frame_cdr`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

NS_PER_S = 1_000_000_000
CAN_MAX_DLC = 8

ImuEvent = tuple[float, tuple[float, float, float], tuple[float, float, float]]
CanEvent = tuple[float, int, bytes, int, bool, bool]


def stamp_to_seconds(stamp: Any) -> float:
    """``builtin_interfaces/Time`` (``sec``, ``nanosec``) as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def imu_event(msg: Any, stamp_s: float | None = None) -> ImuEvent:
    """The core's IMU event for a ``sensor_msgs/Imu``; ``stamp_s`` overrides the header stamp (stamp_source=receipt)."""
    a, w = msg.linear_acceleration, msg.angular_velocity
    stamp = stamp_to_seconds(msg.header.stamp) if stamp_s is None else stamp_s
    return stamp, (a.x, a.y, a.z), (w.x, w.y, w.z)


def can_event(msg: Any, stamp_s: float | None = None) -> CanEvent:
    """The core's CAN event for a ``can_msgs/msg/Frame``; ``stamp_s`` overrides the header stamp."""
    stamp = stamp_to_seconds(msg.header.stamp) if stamp_s is None else stamp_s
    dlc = int(msg.dlc)
    payload = msg.data.tobytes()[: min(dlc, CAN_MAX_DLC)]
    return stamp, int(msg.id), payload, dlc, bool(msg.is_error), bool(msg.is_extended)


def can_event_from_cdr(
    raw: bytes, decode: Callable[[bytes], Any], stamp_s: float | None = None
) -> tuple[CanEvent, bool]:
    """The core's CAN event and the RTR flag of a serialized ``can_msgs/msg/Frame``.

    Plain CDR is read with :func:`decode_frame_cdr`; any other encapsulation is handed to ``decode`` (rclpy's
    ``deserialize_message`` in the node, the rosbags typestore offline) and converted with :func:`can_event`.
    Raises ``ValueError`` for bytes that are not a Frame.
    """
    fields = decode_frame_cdr(raw)
    if fields is None:
        try:
            msg = decode(raw)
        except Exception as exc:  # each deserialiser raises its own error types for bytes it cannot read
            raise ValueError(f"not a serialized can_msgs/msg/Frame: {type(exc).__name__}: {exc}") from exc
        return can_event(msg, stamp_s), bool(msg.is_rtr)
    sec, nanosec, can_id, is_rtr, is_extended, is_error, dlc, data = fields
    stamp = sec + nanosec * 1e-9 if stamp_s is None else stamp_s  # as stamp_to_seconds
    return (stamp, can_id, data[: min(dlc, CAN_MAX_DLC)], dlc, is_error, is_extended), is_rtr


_CDR_LE = {b"\x00\x01": True, b"\x00\x07": True, b"\x00\x00": False, b"\x00\x06": False}  # XCDR1 / XCDR2
_HEAD = {True: struct.Struct("<iII"), False: struct.Struct(">iII")}  # stamp.sec, stamp.nanosec, frame_id length
_BODY = {True: struct.Struct("<I4B8s"), False: struct.Struct(">I4B8s")}  # id, is_rtr/ext/error, dlc, data[8]


def decode_frame_cdr(raw: bytes) -> tuple[int, int, int, bool, bool, bool, int, bytes] | None:
    """``(sec, nanosec, id, is_rtr, is_extended, is_error, dlc, data[8])`` of a serialized Frame, or None when its
    encapsulation is not plain little/big-endian CDR. Offsets count from after the 4-byte encapsulation header."""
    little = _CDR_LE.get(bytes(raw[:2]))
    if little is None:
        return None
    try:
        sec, nanosec, n = _HEAD[little].unpack_from(raw, 4)
        offset = 16 + n  # after encapsulation, stamp and length: frame_id, n bytes with its NUL
        offset += -(offset - 4) % 4  # id is 4-byte aligned
        can_id, rtr, ext, err, dlc, data = _BODY[little].unpack_from(raw, offset)
    except struct.error as exc:
        raise ValueError(f"not a serialized can_msgs/msg/Frame ({len(raw)} bytes): {exc}") from exc
    return sec, nanosec, can_id, bool(rtr), bool(ext), bool(err), dlc, data
