"""Play a rosbag2 over DDS with the recorded timing, like ``ros2 bag play`` (which is not installable from PyPI).

Raw CDR bytes from the bag go straight into ``publisher.publish(bytes)``: no deserialisation, so what subscribers
receive is byte for byte what was recorded. Timing follows the bag's record timestamps scaled by ``rate``; with
``clock_hz > 0`` the player also publishes ``/clock`` (rosgraph_msgs/Clock) with the bag time, so nodes started with
``use_sim_time:=true`` run on bag time (as ``ros2 bag play --clock``). Each topic is published with the QoS its
recorded publishers offered when they all agree, else reliable/volatile depth 10 (``ros2 bag play``'s rule).

Example::

    player = BagPlayer(node, "demo_bag", rate=2.0, clock_hz=40.0, topics=["/imu/data"])
    stats = player.play()        # blocks until the bag (or the loop, when stopped) ends
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from flow_anomaly_ros.data.bags import BagError, BagMessage, BagReader, qos_summary

DEFAULT_CLOCK_HZ = 40.0  # ros2 bag play --clock default frequency
# After the publisher side matched, the reader side needs to match too before data reaches it: measured 0.1-0.3 s
# on an idle machine, over a second on a loaded one (hence a longer settle for evaluation runs).
SUBSCRIBER_SETTLE_S = 0.5


def message_class(msgtype: str) -> Any:
    """Import the rclpy message class for ``pkg/msg/Name`` (or ``pkg/Name``); BagError when it is not installed."""
    parts = msgtype.split("/")
    pkg, name = parts[0], parts[-1]
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype} is not installed for Python ({exc}); build or install {pkg}") from exc


def qos_for_topic(summary: Mapping[str, Any] | None, depth: int = 10) -> QoSProfile:
    """The QoS to publish a recorded topic with (``bags.qos_summary`` result, or None for the default)."""
    if summary is None:
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(depth, int(summary["depth"])),
        reliability=ReliabilityPolicy.RELIABLE if summary["reliable"] else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if summary["transient_local"] else DurabilityPolicy.VOLATILE,
    )


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    skipped_topics: dict[str, str] = field(default_factory=dict)  # topic -> reason
    loops: int = 0
    wall_s: float = 0.0
    bag_s: float = 0.0
    max_lag_ms: float = 0.0  # worst delay of a publish behind its scheduled time

    @property
    def total(self) -> int:
        return sum(self.published.values())


class BagPlayer:
    """Publishes a bag's messages with their recorded spacing (divided by ``rate``) on a given node.

    ``qos_depth`` is the least history depth of the publishers (``ros2 bag play`` uses 10). A player that fell behind
    its schedule publishes its backlog at once; with reliable QoS a writer history shorter than that burst overwrites
    samples a slow subscriber has not acknowledged yet, so evaluation replays use a deep one.
    """

    def __init__(
        self,
        node: Node,
        bag: str | Path,
        *,
        rate: float = 1.0,
        topics: Iterable[str] | None = None,
        clock_hz: float = 0.0,
        loop: bool = False,
        start_offset_s: float = 0.0,
        remap: Mapping[str, str] | None = None,
        wait_for_subscribers: int = 0,
        wait_timeout_s: float = 10.0,
        wait_topics: Iterable[str] | None = None,
        settle_s: float = SUBSCRIBER_SETTLE_S,
        progress: Any | None = None,
        on_publish: Callable[[BagMessage, int], None] | None = None,
        qos_depth: int = 10,
    ) -> None:
        if rate <= 0:
            raise BagError(f"--rate must be > 0, got {rate}")
        if start_offset_s < 0:
            raise BagError(f"--start-offset must be >= 0, got {start_offset_s}")
        self.node = node
        self.reader = BagReader(bag)
        self.rate = float(rate)
        self.clock_hz = float(clock_hz)
        self.loop = loop
        self.start_offset_ns = int(start_offset_s * 1e9)
        self.remap = dict(remap or {})
        self.wait_for_subscribers = int(wait_for_subscribers)
        self.wait_timeout_s = wait_timeout_s
        self.wait_topics = list(wait_topics) if wait_topics is not None else None
        self.settle_s = float(settle_s)
        self.progress = progress
        self.on_publish = on_publish  # called with (message, wall-clock ns just after publish), e.g. for latency
        self.stats = PlayStats()
        self._stop = threading.Event()
        available = self.reader.topics()
        if topics is not None:
            wanted = list(topics)
            missing = [t for t in wanted if t not in available]
            if missing:
                raise BagError(
                    f"topics not in bag {bag}: {', '.join(missing)} (bag has {', '.join(sorted(available))})"
                )
            available = {t: available[t] for t in wanted}
        self._publishers: dict[str, Any] = {}
        for topic, msgtype in sorted(available.items()):
            try:
                cls = message_class(msgtype)
            except BagError as exc:
                self.stats.skipped_topics[topic] = str(exc)
                node.get_logger().warning(f"not playing {topic}: {exc}")
                continue
            qos = qos_for_topic(qos_summary(self.reader.qos(topic)), depth=qos_depth)
            self._publishers[topic] = node.create_publisher(cls, self.remap.get(topic, topic), qos)
            self.stats.published[topic] = 0
            self.stats.failed[topic] = 0
        self._clock_pub = None
        if self.clock_hz > 0:
            from rclpy.qos import qos_profile_system_default
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, "/clock", qos_profile_system_default)
            self._clock_msg = Clock()

    def stop(self) -> None:
        """Ask a running ``play`` to return (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        for pub in self._publishers.values():
            self.node.destroy_publisher(pub)
        if self._clock_pub is not None:
            self.node.destroy_publisher(self._clock_pub)
        self._publishers.clear()
        self.reader.close()

    def _publish_clock(self, bag_ns: int) -> None:
        if self._clock_pub is None:
            return
        self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(int(bag_ns), 1_000_000_000)
        self._clock_pub.publish(self._clock_msg)

    def _wait_for_subscribers(self) -> None:
        if self.wait_for_subscribers <= 0:
            return
        watched = {t: p for t, p in self._publishers.items() if self.wait_topics is None or t in set(self.wait_topics)}
        deadline = time.monotonic() + self.wait_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if all(p.get_subscription_count() >= self.wait_for_subscribers for p in watched.values()):
                # The publisher sees the match before the subscriber has matched back; data sent in that gap is
                # dropped by the reader, so give discovery a moment to finish on the other side.
                time.sleep(self.settle_s)
                return
            time.sleep(0.02)
        lacking = [t for t, p in watched.items() if p.get_subscription_count() < self.wait_for_subscribers]
        if lacking:
            self.node.get_logger().warning(f"playing although these topics have too few subscribers: {lacking}")

    def play(self) -> PlayStats:
        """Publish the bag (repeatedly with ``loop``) and return what was published."""
        self._wait_for_subscribers()
        wall0 = time.monotonic()
        first_ns = self.reader.start_ns + self.start_offset_ns
        clock_period = 1.0 / self.clock_hz if self.clock_hz > 0 else None
        while not self._stop.is_set():
            play_t0 = time.monotonic()
            next_clock = play_t0
            self._publish_clock(first_ns)
            for msg in self.reader.messages(self._publishers.keys(), start_ns=first_ns):
                due = play_t0 + (msg.stamp_ns - first_ns) / 1e9 / self.rate
                while True:  # sleep until due, keeping /clock ticking meanwhile
                    now = time.monotonic()
                    if self._stop.is_set():
                        break
                    if clock_period is not None and now >= next_clock:
                        self._publish_clock(first_ns + int((now - play_t0) * self.rate * 1e9))
                        next_clock += clock_period * max(1, int((now - next_clock) / clock_period) + 1)
                    if now >= due:
                        break
                    wake = due if clock_period is None else min(due, next_clock)
                    time.sleep(max(0.0, wake - now))
                if self._stop.is_set():
                    break
                self.stats.max_lag_ms = max(self.stats.max_lag_ms, (time.monotonic() - due) * 1e3)
                try:
                    self._publishers[msg.topic].publish(msg.data)
                    self.stats.published[msg.topic] += 1
                    if self.on_publish is not None:
                        self.on_publish(msg, time.time_ns())
                except Exception as exc:  # rclpy raises RCLError under overload; count and continue
                    self.stats.failed[msg.topic] += 1
                    self.node.get_logger().debug(f"publish on {msg.topic} failed: {exc}")
                self.stats.bag_s = (msg.stamp_ns - first_ns) / 1e9
                if self.progress is not None:
                    self.progress.update(1)
            if not self.loop or self._stop.is_set():
                break
            self.stats.loops += 1
        self.stats.wall_s = time.monotonic() - wall0
        return self.stats

    def wait_for_all_acked(self, timeout_s: float = 5.0) -> bool:
        """Block until reliable subscribers acknowledged everything (so a player that exits loses no tail)."""
        from rclpy.duration import Duration

        ok = True
        for pub in self._publishers.values():
            with contextlib.suppress(Exception):  # best-effort publishers do not support it
                ok = pub.wait_for_all_acked(Duration(seconds=timeout_s)) and ok
        return ok
