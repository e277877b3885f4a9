"""The window status codes have one Python source (timeseries.status) that matches msg/AnomalyScore.msg and the
generated message class; the node, the core and the demo use it."""

from __future__ import annotations

import re
from pathlib import Path

from flow_anomaly_ros.timeseries import status

MSG = Path(__file__).resolve().parents[1] / "msg" / "AnomalyScore.msg"


def _msg_constants() -> dict[str, int]:
    out = {}
    for line in MSG.read_text().splitlines():
        m = re.match(r"\s*uint8\s+([A-Z_][A-Z0-9_]*)\s*=\s*(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def test_status_codes_match_the_message_definition():
    constants = _msg_constants()
    assert constants, f"no constants parsed from {MSG}"
    assert {name: getattr(status, name) for name in constants} == constants
    assert {v: k for k, v in constants.items()} == status.STATUS_NAMES
    assert status.status_name(3) == "INVALID_INPUT" and status.status_name(99) == "99"


def test_generated_message_class_has_the_same_constants():
    from flow_anomaly_ros.msg import AnomalyScore

    for name, value in _msg_constants().items():
        assert getattr(AnomalyScore, name) == value


def test_core_node_and_demo_use_the_one_source():
    from flow_anomaly_ros.demo import cores
    from flow_anomaly_ros.ros import timeseries_node
    from flow_anomaly_ros.timeseries import pipeline

    assert pipeline.STATUS_NAMES is status.STATUS_NAMES is timeseries_node.STATUS_NAMES
    assert (pipeline.OK, pipeline.INVALID_INPUT, pipeline.MODEL_ERROR) == (0, 3, 4)
    assert (cores.STATUS_OK, cores.STATUS_INVALID, cores.STATUS_MODEL_ERROR) == (status.OK, 3, 4)
    assert timeseries_node.STATUS_INVALID_INPUT == status.INVALID_INPUT and timeseries_node.STATUS_OK == status.OK


def test_bounded_queue_refuses_and_counts_when_full():
    import threading

    from flow_anomaly_ros.timeseries.bounded_queue import BoundedQueue

    q = BoundedQueue(2)
    assert q.put(1) and q.put(2) and not q.put(3)
    assert q.dropped == 1 and len(q) == 2
    assert q.take_all(0.0) == [1, 2] and len(q) == 0
    assert q.take_all(0.0) == []
    threading.Timer(0.05, q.put, args=(4,)).start()
    assert q.take_all(5.0) == [4]  # a waiting take wakes on put
