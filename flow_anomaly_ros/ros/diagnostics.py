"""Publishing node health on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) at a fixed period.

The node supplies a callback that returns the current level, message and key/value pairs; this class owns the
timer, the message layout and the ``hardware_id``. Levels follow diagnostic_msgs: OK, WARN, ERROR, STALE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from flow_anomaly_ros.health import ERROR, LEVEL_NAMES, OK, STALE, WARN, Health  # noqa: F401  (re-exported)

# Health is reported on wall time: with use_sim_time the ROS clock stops while a bag is paused or not yet playing.
STEADY_CLOCK = Clock(clock_type=ClockType.STEADY_TIME)


def level_of(status: DiagnosticStatus) -> int:
    """The level of a received DiagnosticStatus as an int."""
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def make_status(name: str, hardware_id: str, health: Health) -> DiagnosticStatus:
    status = DiagnosticStatus()
    status.level = bytes([int(health.level)])  # byte-typed field
    status.name = name
    status.message = health.message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in health.values.items()]
    return status


class DiagnosticsReporter:
    """Publishes ``callback()`` on ``/diagnostics`` every ``period_s`` seconds (and on demand with ``publish``)."""

    def __init__(
        self,
        node: Node,
        callback: Callable[[], Health | list[tuple[str, Health]]],
        hardware_id: str = "",
        period_s: float = 1.0,
        topic: str = "/diagnostics",
    ) -> None:
        self._node = node
        self._callback = callback
        self._hardware_id = hardware_id or node.get_fully_qualified_name()
        self._pub = node.create_publisher(DiagnosticArray, topic, 10)
        # its own callback group: with the multi-threaded executor of run_node, /diagnostics keeps publishing while
        # a long callback (on_configure building a TensorRT engine for minutes) holds the node's default group
        self._group = MutuallyExclusiveCallbackGroup()
        self._timer = node.create_timer(period_s, self.publish, callback_group=self._group, clock=STEADY_CLOCK)

    def publish(self) -> None:
        result = self._callback()
        items = result if isinstance(result, list) else [(self._node.get_fully_qualified_name(), result)]
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [make_status(name, self._hardware_id, health) for name, health in items]
        try:
            self._pub.publish(msg)
        except Exception as exc:  # a shutting-down context must not kill the node's timer thread
            self._node.get_logger().debug(f"diagnostics publish failed: {exc}")

    def destroy(self) -> None:
        self._node.destroy_timer(self._timer)
        self._node.destroy_publisher(self._pub)
