"""can_msgs/msg/Frame (as ros2_socketcan publishes it on ``from_can_bus``) <-> the core's CAN event.

ros2_socketcan's ``Frame`` is classic CAN: ``header``, ``id`` (11 or 29 bit), ``is_rtr``, ``is_extended``,
``is_error``, ``dlc`` (0..8) and a fixed ``uint8[8] data`` of which the first ``dlc`` bytes are the payload.
The core's CAN event is ``(stamp_s, can_id, data: bytes, dlc, is_error, is_extended)`` (docs/architecture.md);
the payload handed to it is ``data[:dlc]`` so that a DLC that disagrees with the DBC reaches the core's check
(which rejects it) instead of being padded into something decodable. Remote (RTR) frames carry no payload and
are not data: the node counts them and does not score them.

The node subscribes to CAN frames *serialized* (``raw=True``) and reads them with :func:`decode_frame_cdr`: turning
a ``Frame`` into a Python message object costs ~110 µs here (its ``uint8[8]`` becomes a numpy array), reading the
36-odd CDR bytes with ``struct`` a few µs, and at ~1,000 frames/s that difference is a tenth of a core. The decoder
handles the plain CDR encodings Fast DDS and Cyclone DDS send (XCDR1 and XCDR2, either byte order; ``Frame`` has
no 8-byte member, so both align alike); any other encapsulation goes through rclpy's own deserialisation, and a
test checks the decoder against it field by field.

``can_msgs`` is not on PyPI: ``make setup`` builds it from its public definition (``tools/can_msgs``) with the same
rosidl build, and on a vehicle the distribution's ``ros-<distro>-can-msgs`` provides it. When it is missing,
:func:`frame_type` raises :class:`CanTypeMissing` with a message saying exactly that.
"""

from __future__ import annotations

import struct
from typing import Any

from flow_anomaly_ros.ros.imu_conversion import seconds_to_stamp, stamp_to_seconds

CAN_MAX_DLC = 8
CanEvent = tuple[float, int, bytes, int, bool, bool]


class CanTypeMissing(ImportError):
    """can_msgs/msg/Frame cannot be imported in this Python environment."""


def frame_type() -> Any:
    """The ``can_msgs.msg.Frame`` class; :class:`CanTypeMissing` with instructions when it is not installed."""
    try:
        from can_msgs.msg import Frame
    except ImportError as exc:
        raise CanTypeMissing(
            f"message type can_msgs/msg/Frame is not installed for this Python ({exc}). On a vehicle install "
            "ros-<distro>-can-msgs (the package ros2_socketcan publishes); in the dev venv run `make setup`, which "
            "builds it from tools/can_msgs. To run on IMU only, set can_topic:='' (empty)."
        ) from exc
    return Frame


def can_event(msg: Any, stamp_s: float | None = None) -> CanEvent:
    """The core's CAN event for a ``can_msgs/msg/Frame``; ``stamp_s`` overrides the header stamp."""
    stamp = stamp_to_seconds(msg.header.stamp) if stamp_s is None else stamp_s
    dlc = int(msg.dlc)
    payload = msg.data.tobytes()[: min(dlc, CAN_MAX_DLC)]
    return stamp, int(msg.id), payload, dlc, bool(msg.is_error), bool(msg.is_extended)


def can_event_from_cdr(raw: bytes, frame_cls: Any, stamp_s: float | None = None) -> tuple[CanEvent, bool]:
    """The core's CAN event and the RTR flag of a serialized ``can_msgs/msg/Frame`` (see the module docstring).

    Raises ``ValueError`` for bytes that are not a Frame (truncated, or a string that runs past the end).
    """
    fields = decode_frame_cdr(raw)
    if fields is None:  # an encapsulation this reader does not know: let rclpy deserialise it
        from rclpy.serialization import deserialize_message

        try:
            msg = deserialize_message(raw, frame_cls)
        except Exception as exc:  # rclpy raises its own error types for bytes it cannot read
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


def can_message(
    frame_cls: Any,
    stamp_s: float,
    can_id: int,
    data: bytes,
    dlc: int | None = None,
    is_error: bool = False,
    is_extended: bool = False,
    frame_id: str = "can",
) -> Any:
    """A ``can_msgs/msg/Frame`` as ros2_socketcan would publish it (payload zero-padded to 8 bytes)."""
    if len(data) > CAN_MAX_DLC:
        raise ValueError(f"classic CAN carries at most 8 data bytes, got {len(data)}")
    msg = frame_cls()
    msg.header.stamp = seconds_to_stamp(stamp_s)
    msg.header.frame_id = frame_id
    msg.id = int(can_id)
    msg.is_extended = bool(is_extended)
    msg.is_error = bool(is_error)
    msg.is_rtr = False
    msg.dlc = len(data) if dlc is None else int(dlc)
    msg.data = list(bytes(data).ljust(CAN_MAX_DLC, b"\0"))
    return msg
