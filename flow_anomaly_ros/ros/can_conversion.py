"""can_msgs/msg/Frame (as ros2_socketcan publishes it on ``from_can_bus``) <-> the core's CAN event.

ros2_socketcan's ``Frame`` is classic CAN: ``header``, ``id`` (11 or 29 bit), ``is_rtr``, ``is_extended``,
``is_error``, ``dlc`` (0..8) and a fixed ``uint8[8] data`` of which the first ``dlc`` bytes are the payload.
The core's CAN event is ``(stamp_s, can_id, data: bytes, dlc, is_error, is_extended)`` (docs/architecture.md);
the payload handed to it is ``data[:dlc]`` so that a DLC that disagrees with the DBC reaches the core's check
(which rejects it) instead of being padded into something decodable. Remote (RTR) frames carry no payload and
are not data: the node counts them and does not score them.

``can_msgs`` is not on PyPI: ``make setup`` builds it from its public definition (``tools/can_msgs``) with the same
rosidl build, and on a vehicle the distribution's ``ros-<distro>-can-msgs`` provides it. When it is missing,
:func:`frame_type` raises :class:`CanTypeMissing` with a message saying exactly that.
"""

from __future__ import annotations

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
