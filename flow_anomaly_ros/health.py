"""Health of a component as ``/diagnostics`` reports it: a level, a message, key/value pairs (ROS-free).

The levels are the values of ``diagnostic_msgs/DiagnosticStatus`` (single bytes there; plain ints here, converted
by :func:`flow_anomaly_ros.ros.diagnostics.make_status`), so ROS-free code can say how healthy something is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


@dataclass
class Health:
    level: int = OK
    message: str = "ok"
    values: Mapping[str, Any] = field(default_factory=dict)
