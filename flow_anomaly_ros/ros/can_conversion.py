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

from typing import Any

from flow_anomaly_ros.ros.imu_conversion import seconds_to_stamp
from flow_anomaly_ros.timeseries.message_events import CAN_MAX_DLC as CAN_MAX_DLC
from flow_anomaly_ros.timeseries.message_events import CanEvent as CanEvent
from flow_anomaly_ros.timeseries.message_events import can_event as can_event
from flow_anomaly_ros.timeseries.message_events import can_event_from_cdr as _can_event_from_cdr
from flow_anomaly_ros.timeseries.message_events import decode_frame_cdr as decode_frame_cdr


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


def can_event_from_cdr(raw: bytes, frame_cls: Any, stamp_s: float | None = None) -> tuple[CanEvent, bool]:
    """The core's CAN event and the RTR flag of a serialized ``can_msgs/msg/Frame`` (see the module docstring).

    Raises ``ValueError`` for bytes that are not a Frame (truncated, or a string that runs past the end).
    """

    def deserialize(data: bytes) -> Any:  # an encapsulation the struct reader does not know: rclpy reads it
        from rclpy.serialization import deserialize_message

        return deserialize_message(data, frame_cls)

    return _can_event_from_cdr(raw, deserialize, stamp_s)


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
