"""rosbag2 recordings (sensor_msgs/Imu, can_msgs/Frame, sensor_msgs/NavSatFix ...) as the core's :class:`Recording`.

One piece of code serves the demo's offline evaluation and ``flow-anomaly ts train --bag`` / ``ts score``: messages
are read with :class:`flow_anomaly_ros.data.bags.BagReader` (MCAP or SQLite3) and converted with the node's own
conversion functions, those of each stream's registry module (:mod:`flow_anomaly_ros.streams`), so a bag read here
gives the node's inputs exactly. No ROS code is imported: messages are deserialised by the ``rosbags`` typestore
(pure Python CDR), CAN frames read from their CDR bytes as the node reads them.

Stamps: ``header`` (default, like the node's ``stamp_source: header``) or ``bag`` (the bag's record time, like
``stamp_source: receipt`` for drivers that leave header stamps zero).

Example::

    rec = recording_from_bag("drive_bag", "/imu/data", "/from_can_bus")
    rec = read_recording("drive_bag", {"/imu/data": "imu"}, "/from_can_bus")   # several IMU sources, checks
    rec = read_recording("drive_bag", {"/imu/data": "imu"}, "/from_can_bus", topics={"gnss": "/gps/fix"})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flow_anomaly_ros.data.bags import BagReader

STAMP_SOURCES = ("header", "bag")


class BagTopicError(ValueError):
    """A requested topic is missing from the bag, has no messages or has the wrong type (message names them)."""


@dataclass
class BagTopicCounts:
    """Messages read per topic (for summaries and error messages)."""

    imu: dict[str, int] = field(default_factory=dict)  # topic -> count
    can: int = 0
    topics_in_bag: dict[str, str] = field(default_factory=dict)  # topic -> type
    others: dict[str, int] = field(default_factory=dict)  # topic -> count, registry streams other than IMU/CAN


def recording_from_bag(bag: str | Path, imu_topic: str, can_topic: str, topics: Mapping[str, str] | None = None) -> Any:
    """The bag's IMU, CAN (and ``topics``: stream -> topic) messages as the time-series core's Recording, via the
    node's conversion functions.

    One IMU topic (source ``imu``), header stamps, no checks: what the demo's offline evaluation replays.
    """
    recording, _ = read_recording(bag, {imu_topic: "imu"}, can_topic, check=False, topics=topics)
    return recording


def read_recording(
    bag: str | Path,
    imu_topics: Mapping[str, str],
    can_topic: str | None,
    stamp_source: str = "header",
    check: bool = True,
    topics: Mapping[str, str] | None = None,
) -> tuple[Any, BagTopicCounts]:
    """Read ``imu_topics`` (topic -> IMU source name), ``can_topic`` ("" / None = no CAN) and ``topics`` (other
    registry stream -> its topic, e.g. ``{"gnss": "/gps/fix"}``) from one bag.

    Each message goes through its stream's conversion (:mod:`flow_anomaly_ros.streams`). With ``check`` a topic
    that is not in the bag, has another type or holds no message raises :class:`BagTopicError` naming it and the
    bag's topics. Events are sorted by stamp (stable: IMU sources in the given order, then CAN, then the other
    streams, for equal stamps).
    """
    from flow_anomaly_ros import streams
    from flow_anomaly_ros.timeseries.events import Recording, concat_events

    if stamp_source not in STAMP_SOURCES:
        raise ValueError(f"stamp_source must be one of {STAMP_SOURCES}, got {stamp_source!r}")
    sources = list(dict.fromkeys(imu_topics.values()))
    inputs = {t: (streams.get("imu"), sources.index(s)) for t, s in imu_topics.items()}  # topic -> (kind, source)
    if can_topic:
        inputs[can_topic] = (streams.get("can"), 0)
    for name, topic in (topics or {}).items():
        if topic:
            inputs[topic] = (streams.get(name), 0)
    rows: dict[str, list[tuple]] = {t: [] for t in inputs}
    with BagReader(bag) as reader:
        in_bag = reader.topics()
        if check:
            _check_topics(bag, in_bag, {t: kind.msgtype for t, (kind, _) in inputs.items()})
        for m in reader.messages(list(inputs)):
            stamp = m.stamp_ns * 1e-9 if stamp_source == "bag" else None
            rows[m.topic].append(inputs[m.topic][0].read_cdr(m.data, lambda _, m=m: reader.decode(m), stamp))
    counts = BagTopicCounts(
        {t: len(rows[t]) for t in imu_topics},
        len(rows[can_topic]) if can_topic else 0,
        in_bag,
        {t: len(r) for t, r in rows.items() if inputs[t][0].name not in ("imu", "can")},
    )
    if check:
        empty = [t for t, r in rows.items() if not r]
        if empty:
            raise BagTopicError(f"bag {bag}: no messages on {', '.join(empty)}")
    parts = [kind.to_events(rows[t], source) for t, (kind, source) in inputs.items()]
    meta = {"bag": str(bag), "imu_topics": dict(imu_topics), "can_topic": can_topic or "", "stamps": stamp_source}
    if topics:
        meta["topics"] = dict(topics)
    return Recording(concat_events(parts), tuple(sources), meta), counts


def _check_topics(bag: str | Path, in_bag: dict[str, str], wanted: Mapping[str, str]) -> None:
    """``wanted``: topic -> the message type its stream reads."""
    listing = ", ".join(f"{t} ({ty})" for t, ty in sorted(in_bag.items())) or "none"
    problems = []
    for topic, want in wanted.items():
        if topic not in in_bag:
            problems.append(f"topic {topic} is not in the bag")
        elif in_bag[topic] != want:
            problems.append(f"topic {topic} has type {in_bag[topic]}, expected {want}")
    if problems:
        raise BagTopicError(f"bag {bag}: {'; '.join(problems)}. Topics in the bag: {listing}")
