"""What the package knows about one kind of input stream, and the registry of them (ROS-free).

A :class:`StreamKind` holds everything that differs between inputs: the ROS message type, the message -> core
event conversion (from the message object, or from its CDR bytes where that is how it is read), the signal columns
a model config can name, how a bag's messages become rows of a :class:`flow_anomaly_ros.timeseries.events.Recording`
and the default topic and QoS the node subscribes with. The time-series core, the node, the bag readers and the
demo look streams up here instead of naming IMU, CAN or GNSS, so a new sensor is one module in this package.

ROS message classes are imported only by :meth:`StreamKind.ros_type` (the node, tests that publish), so the
ROS-free core (features, training, ``ts train --bag``) never imports rclpy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StreamKind:
    """One input kind. ``fields`` are the signal columns a config names (``gnss: speed``); CAN has none of its own
    (its signals are the DBC's). ``kind`` is the code in the events array's ``kind`` column."""

    name: str
    kind: int
    msgtype: str  # ROS 2 type name, e.g. "sensor_msgs/msg/NavSatFix"
    ros_module: str  # "sensor_msgs.msg" (imported lazily by ros_type)
    ros_class: str  # "NavSatFix"
    default_topic: str  # relative name the node subscribes to by default
    default_qos: str = "sensor_data"  # ros.qos.qos_from_name profile name
    fields: tuple[str, ...] = ()
    # message object (rclpy or rosbags dataclass) + optional stamp override -> the core's event tuple
    event: Callable[[Any, float | None], tuple] | None = None
    # serialized message, a fallback deserialiser, stamp override -> event (None: deserialise then ``event``)
    event_from_cdr: Callable[[bytes, Callable[[bytes], Any], float | None], tuple] | None = None
    # events of one topic (one source) -> EVENT_DTYPE rows
    to_events: Callable[[Sequence[tuple], int], np.ndarray] | None = None
    # a ROS message carrying one event, for publishers (test replay, benchmarks); takes the message class
    message: Callable[..., Any] | None = None
    # signals derived per sample for streams whose columns need state (GNSS: speed from consecutive fixes)
    new_state: Callable[[], Any] | None = None
    derive: Callable[[Any, float, np.ndarray], np.ndarray | None] | None = None
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def ros_type(self) -> Any:
        """The rclpy message class; ImportError saying which package provides it when it is not installed."""
        try:
            return getattr(importlib.import_module(self.ros_module), self.ros_class)
        except ImportError as exc:
            raise ImportError(
                f"message type {self.msgtype} ({self.name} stream) is not installed for this Python ({exc}); "
                f"install ros-<distro>-{self.ros_module.split('.')[0].replace('_', '-')}"
            ) from exc

    def read_cdr(self, raw: bytes, decode: Callable[[bytes], Any], stamp_s: float | None = None) -> tuple:
        """The core's event of a serialized message (the stream's CDR reader, else ``decode`` + ``event``)."""
        if self.event_from_cdr is not None:
            return self.event_from_cdr(raw, decode, stamp_s)
        return self.event(decode(raw), stamp_s)


_STREAMS: dict[str, StreamKind] = {}


def register_stream(stream: StreamKind) -> StreamKind:
    """Add a stream kind; its name and kind code must be new (a second module claiming either is a bug)."""
    for other in _STREAMS.values():
        if other.name == stream.name or other.kind == stream.kind:
            if other == stream:
                return stream
            raise ValueError(f"stream {stream.name!r} (kind {stream.kind}) clashes with registered {other.name!r}")
    _STREAMS[stream.name] = stream
    return stream


def get(name: str) -> StreamKind:
    try:
        return _STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown stream {name!r}; registered: {', '.join(sorted(_STREAMS))}") from None


def by_kind(kind: int) -> StreamKind:
    for s in _STREAMS.values():
        if s.kind == kind:
            return s
    raise KeyError(f"no stream with kind code {kind}")


def all_streams() -> list[StreamKind]:
    """Registered streams in kind-code order."""
    return sorted(_STREAMS.values(), key=lambda s: s.kind)
