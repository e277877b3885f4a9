"""Record topics into a rosbag2 (MCAP or SQLite3), like ``ros2 bag record`` (which is not installable from PyPI).

Subscriptions are raw (``create_subscription(..., raw=True)``): the CDR bytes DDS delivers are written unchanged,
so a recording of a played bag is byte-identical to the original. Topics are given by name (their type discovered
from the ROS graph, or given as ``topic:=pkg/msg/Type``) or all topics with ``all_topics``; discovery keeps running,
so topics that appear later are picked up. QoS follows ``ros2 bag record``'s adaptive rule: reliable only when every
publisher offers reliable, transient-local only when every publisher is transient-local; a topic subscribed before
any publisher exists (type given) is subscribed reliable, which matches reliable publishers (the nodes' outputs).
Record time is the node clock at receipt (bag time when ``use_sim_time`` is set and a ``/clock`` is running).

Example::

    rec = BagRecorder(node, "out_bag", topics=["/imu/data", "/can/from_can_bus"], storage="mcap")
    ...spin the node...
    rec.close()
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from flow_anomaly_ros.data.bags import BagError, BagWriter, make_qos, normalize_msgtype
from flow_anomaly_ros.ros.bag_player import message_class

# Topics every ROS graph has; `--all` skips them like ros2 bag record does (unless named explicitly).
HIDDEN_TOPICS = ("/rosout", "/parameter_events")
DISCOVERY_PERIOD_S = 0.25


class BagRecorder:
    """Subscribes to topics on ``node`` and writes every message it receives into a new bag."""

    def __init__(
        self,
        node: Node,
        out: str | Path,
        *,
        topics: Iterable[str] = (),
        all_topics: bool = False,
        storage: str = "mcap",
        types: Mapping[str, str] | None = None,
        exclude: Iterable[str] = (),
        depth: int = 100,
    ) -> None:
        self.node = node
        self.wanted = list(dict.fromkeys(topics))
        if not self.wanted and not all_topics:
            raise BagError("nothing to record: give --topics or --all")
        self.all_topics = all_topics
        self.types = {t: normalize_msgtype(v) for t, v in (types or {}).items()}
        self.exclude = set(exclude)
        self.depth = depth
        self.writer = BagWriter(out, storage=storage)
        self.writer.open()
        self._lock = threading.Lock()
        self._subs: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self._closed = False
        self._discover()
        self._timer = node.create_timer(DISCOVERY_PERIOD_S, self._discover)

    @property
    def subscribed(self) -> list[str]:
        return list(self._subs)

    def _qos(self, topic: str) -> QoSProfile:
        infos = self.node.get_publishers_info_by_topic(topic)
        if not infos:  # type given, no publisher yet: reliable (matches reliable publishers, the output default)
            return QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=self.depth,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE,
            )
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        transient = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
        )

    def _discover(self) -> None:
        if self._closed:
            return
        graph = dict(self.node.get_topic_names_and_types())
        candidates = list(self.wanted)
        if self.all_topics:
            candidates += [t for t in graph if t not in HIDDEN_TOPICS and t not in self.wanted]
        for topic in candidates:
            if topic in self._subs or topic in self.skipped or topic in self.exclude:
                continue
            msgtype = self.types.get(topic)
            if msgtype is None:
                graph_types = graph.get(topic)
                if not graph_types:
                    continue  # not published yet; try again at the next discovery tick
                msgtype = graph_types[0]
            self._subscribe(topic, normalize_msgtype(msgtype))

    def _subscribe(self, topic: str, msgtype: str) -> None:
        try:
            cls = message_class(msgtype)
            qos = self._qos(topic)
            with self._lock:
                self.writer.add_topic(
                    topic,
                    msgtype,
                    [make_qos(qos.reliability == ReliabilityPolicy.RELIABLE, False, 10)],
                )
        except BagError as exc:
            self.skipped[topic] = str(exc)
            self.node.get_logger().warning(f"not recording {topic}: {exc}")
            return
        self.counts[topic] = 0
        self._subs[topic] = self.node.create_subscription(
            cls, topic, lambda raw, _t=topic: self._on_message(_t, raw), qos, raw=True
        )
        self.node.get_logger().info(f"recording {topic} [{msgtype}]")

    def _on_message(self, topic: str, raw: bytes) -> None:
        stamp = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self.writer.write(topic, stamp, raw)
            self.counts[topic] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        """Stop recording and finalise the bag (metadata.yaml); safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.node.destroy_timer(self._timer)
        for sub in self._subs.values():
            self.node.destroy_subscription(sub)
        with self._lock:
            self.writer.close()
