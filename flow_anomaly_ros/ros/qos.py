"""QoS profiles chosen by name from parameters, so every node spells them the same way."""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

QOS_NAMES = ("sensor_data", "reliable", "best_effort")


def qos_from_name(name: str, depth: int | None = None) -> QoSProfile:
    """``sensor_data`` (best effort, keep last 5), ``reliable`` or ``best_effort`` with an optional depth."""
    if name == "sensor_data":
        profile = QoSProfile(
            history=qos_profile_sensor_data.history,
            depth=depth or qos_profile_sensor_data.depth,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
    elif name in ("reliable", "best_effort"):
        profile = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth or 10,
            reliability=ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
    else:
        raise ValueError(f"unknown QoS profile {name!r}; choose one of {', '.join(QOS_NAMES)}")
    return profile


def _policy(value) -> str:
    return getattr(value, "name", str(value)).lower()


def incompatible_publishers(node, topic: str, subscription_qos: QoSProfile) -> list[str]:
    """Why each publisher on ``topic`` cannot deliver to a subscription with ``subscription_qos``.

    A best-effort publisher (``v4l2_camera``, most drivers: sensor-data QoS) never matches a reliable subscription,
    and DDS says nothing about it: the node just receives no images. This names them for /diagnostics, from the
    graph (``get_publishers_info_by_topic``) and rclpy's own check (``qos_check_compatible``).
    """
    from rclpy.qos import QoSCompatibility, qos_check_compatible

    problems = []
    for info in node.get_publishers_info_by_topic(node.resolve_topic_name(topic)):
        compatibility, reason = qos_check_compatible(info.qos_profile, subscription_qos)
        # ERROR = can never match. WARNING only means a SYSTEM_DEFAULT policy leaves it to the middleware (e.g.
        # liveliness of any default profile), which matches in practice: not reported
        if compatibility == QoSCompatibility.ERROR:
            who = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
            problems.append(
                f"{who} publishes {_policy(info.qos_profile.reliability)}/{_policy(info.qos_profile.durability)}, "
                f"subscription is {_policy(subscription_qos.reliability)}/{_policy(subscription_qos.durability)}"
                + (f" ({reason.strip()})" if reason else "")
            )
    return problems
