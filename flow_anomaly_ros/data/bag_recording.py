"""rosbag2 recordings (sensor_msgs/Imu + can_msgs/Frame) as the time-series core's :class:`Recording`.

One piece of code serves the demo's offline evaluation and ``flow-anomaly ts train --bag`` / ``ts score``: messages
are read with :class:`flow_anomaly_ros.data.bags.BagReader` (MCAP or SQLite3) and converted with the node's own
conversion functions (:mod:`flow_anomaly_ros.timeseries.message_events`: ``imu_event``, ``can_event_from_cdr``),
so a bag read here gives the node's inputs exactly. No ROS code is imported: IMU messages are deserialised by the
``rosbags`` typestore (pure Python CDR), CAN frames read from their CDR bytes as the node reads them.

Stamps: ``header`` (default, like the node's ``stamp_source: header``) or ``bag`` (the bag's record time, like
``stamp_source: receipt`` for drivers that leave header stamps zero).

Example::

    rec = recording_from_bag("drive_bag", "/imu/data", "/from_can_bus")
    rec = read_recording("drive_bag", {"/imu/data": "imu"}, "/from_can_bus")   # several IMU sources, checks
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.data.bags import BagReader
from flow_anomaly_ros.timeseries.message_events import can_event_from_cdr, imu_event

IMU_TYPE = "sensor_msgs/msg/Imu"
CAN_TYPE = "can_msgs/msg/Frame"
STAMP_SOURCES = ("header", "bag")


class BagTopicError(ValueError):
    """A requested topic is missing from the bag, has no messages or has the wrong type (message names them)."""


@dataclass
class BagTopicCounts:
    """Messages read per topic (for summaries and error messages)."""

    imu: dict[str, int] = field(default_factory=dict)  # topic -> count
    can: int = 0
    topics_in_bag: dict[str, str] = field(default_factory=dict)  # topic -> type


def recording_from_bag(bag: str | Path, imu_topic: str, can_topic: str) -> Any:
    """The bag's IMU and CAN messages as the time-series core's Recording, via the node's conversion functions.

    One IMU topic (source ``imu``), header stamps, no checks: what the demo's offline evaluation replays.
    """
    recording, _ = read_recording(bag, {imu_topic: "imu"}, can_topic, check=False)
    return recording


def read_recording(
    bag: str | Path,
    imu_topics: Mapping[str, str],
    can_topic: str | None,
    stamp_source: str = "header",
    check: bool = True,
) -> tuple[Any, BagTopicCounts]:
    """Read ``imu_topics`` (topic -> IMU source name) and ``can_topic`` ("" / None = no CAN) from one bag.

    With ``check`` a topic that is not in the bag, has another type or holds no message raises
    :class:`BagTopicError` naming it and the bag's topics. Events are sorted by stamp (stable: IMU sources in the
    given order, then CAN, for equal stamps).
    """
    from flow_anomaly_ros.timeseries.events import Recording, can_events, concat_events, imu_events

    if stamp_source not in STAMP_SOURCES:
        raise ValueError(f"stamp_source must be one of {STAMP_SOURCES}, got {stamp_source!r}")
    sources = list(dict.fromkeys(imu_topics.values()))
    imu_rows: dict[str, list[tuple[float, tuple, tuple]]] = {t: [] for t in imu_topics}
    can_rows: list[tuple] = []
    wanted = [*imu_topics, *([can_topic] if can_topic else [])]
    with BagReader(bag) as reader:
        in_bag = reader.topics()
        if check:
            _check_topics(bag, in_bag, imu_topics, can_topic)
        for m in reader.messages(wanted):
            stamp = m.stamp_ns * 1e-9 if stamp_source == "bag" else None
            if m.topic in imu_rows:
                imu_rows[m.topic].append(imu_event(reader.decode(m), stamp))
            else:
                can_rows.append(can_event_from_cdr(m.data, lambda _, m=m: reader.decode(m), stamp)[0])
    counts = BagTopicCounts({t: len(r) for t, r in imu_rows.items()}, len(can_rows), in_bag)
    if check:
        empty = [t for t, n in counts.imu.items() if n == 0] + ([can_topic] if can_topic and not can_rows else [])
        if empty:
            raise BagTopicError(f"bag {bag}: no messages on {', '.join(empty)}")
    parts = []
    for topic, rows in imu_rows.items():
        parts.append(
            imu_events(
                np.array([r[0] for r in rows]),
                np.array([r[1] for r in rows]).reshape(-1, 3),
                np.array([r[2] for r in rows]).reshape(-1, 3),
                source=sources.index(imu_topics[topic]),
            )
        )
    data = np.zeros((len(can_rows), 8), np.uint8)
    for i, r in enumerate(can_rows):
        data[i, : len(r[2])] = np.frombuffer(r[2], np.uint8)
    parts.append(
        can_events(
            np.array([r[0] for r in can_rows]),
            np.array([r[1] for r in can_rows], np.uint32),
            data,
            np.array([r[3] for r in can_rows], np.uint8),
            np.array([r[4] for r in can_rows], bool),
            np.array([r[5] for r in can_rows], bool),
        )
    )
    meta = {"bag": str(bag), "imu_topics": dict(imu_topics), "can_topic": can_topic or "", "stamps": stamp_source}
    return Recording(concat_events(parts), tuple(sources), meta), counts


def _check_topics(
    bag: str | Path, in_bag: dict[str, str], imu_topics: Mapping[str, str], can_topic: str | None
) -> None:
    listing = ", ".join(f"{t} ({ty})" for t, ty in sorted(in_bag.items())) or "none"
    problems = []
    for topic, want in [*((t, IMU_TYPE) for t in imu_topics), *([(can_topic, CAN_TYPE)] if can_topic else [])]:
        if topic not in in_bag:
            problems.append(f"topic {topic} is not in the bag")
        elif in_bag[topic] != want:
            problems.append(f"topic {topic} has type {in_bag[topic]}, expected {want}")
    if problems:
        raise BagTopicError(f"bag {bag}: {'; '.join(problems)}. Topics in the bag: {listing}")
