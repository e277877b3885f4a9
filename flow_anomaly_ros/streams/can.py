"""CAN stream: ``can_msgs/msg/Frame`` as ros2_socketcan publishes it; signals are DBC ``MESSAGE.SIGNAL`` names.

Frames are read from their CDR bytes (:func:`flow_anomaly_ros.timeseries.message_events.can_event_from_cdr`: a
``struct`` read, ~20x cheaper than a message object at a saturated bus) in the node and in bags alike; the
featurizer's ``push_can`` decodes them with the model's DBC and keeps the timing features. ``can_msgs`` is not on
PyPI: ``make setup`` builds it (``tools/can_msgs``), a vehicle has ``ros-<distro>-can-msgs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from flow_anomaly_ros.streams.base import StreamKind, register_stream
from flow_anomaly_ros.timeseries.events import KIND_CAN, can_events
from flow_anomaly_ros.timeseries.message_events import can_event, can_event_from_cdr


def event_from_cdr(raw: bytes, decode: Callable[[bytes], Any], stamp_s: float | None = None) -> tuple:
    """The core's CAN event of a serialized Frame (remote frames included; the node drops them itself)."""
    return can_event_from_cdr(raw, decode, stamp_s)[0]


def to_events(events: Sequence[tuple], source: int = 0) -> np.ndarray:
    """``(stamp, id, data, dlc, is_error, is_extended)`` events -> rows (payload zero-padded to 8 bytes)."""
    data = np.zeros((len(events), 8), np.uint8)
    for i, e in enumerate(events):
        data[i, : len(e[2])] = np.frombuffer(e[2], np.uint8)
    return can_events(
        np.array([e[0] for e in events]),
        np.array([e[1] for e in events], np.uint32),
        data,
        np.array([e[3] for e in events], np.uint8),
        np.array([e[4] for e in events], bool),
        np.array([e[5] for e in events], bool),
    )


STREAM = register_stream(
    StreamKind(
        name="can",
        kind=KIND_CAN,
        msgtype="can_msgs/msg/Frame",
        ros_module="can_msgs.msg",
        ros_class="Frame",
        default_topic="from_can_bus",
        default_qos="sensor_data",
        event=can_event,
        event_from_cdr=event_from_cdr,
        to_events=to_events,
        doc=__doc__ or "",
    )
)
