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
