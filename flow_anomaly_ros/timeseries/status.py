"""Window status codes: the one Python copy of the ``AnomalyScore.msg`` constants (ROS-free).

``test/test_ts_status.py`` checks these against ``msg/AnomalyScore.msg`` and the generated message class, so the
core, the node, the demo and the fleet tools cannot drift from the message definition.
"""

from __future__ import annotations

OK, WARMING_UP, STALE_INPUT, INVALID_INPUT, MODEL_ERROR = 0, 1, 2, 3, 4
STATUS_NAMES: dict[int, str] = {
    OK: "OK",
    WARMING_UP: "WARMING_UP",
    STALE_INPUT: "STALE_INPUT",
    INVALID_INPUT: "INVALID_INPUT",
    MODEL_ERROR: "MODEL_ERROR",
}


def status_name(code: int) -> str:
    """``"OK"`` ... for a known code, the number as text for an unknown one (diagnostics never raise on it)."""
    return STATUS_NAMES.get(code, str(code))
