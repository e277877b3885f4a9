"""Parameters of ``timeseries_anomaly_node`` (name, default, description, limits), checked by ManagedAnomalyNode.

``config/timeseries_anomaly.yaml`` documents every one of them (``test_ts_node_conversion`` checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flow_anomaly_ros.ros.managed_node import Param
from flow_anomaly_ros.ros.qos import QOS_NAMES
from flow_anomaly_ros.ros.scheduling import cpu_list_problem
from flow_anomaly_ros.timeseries.pipeline import CONTRIBUTIONS


def _check_topics(value: Any) -> str | None:
    if any(not isinstance(t, str) or not t.strip() for t in value):
        return "topic names must be non-empty strings"
    if len(set(value)) != len(value):
        return "topic names must be unique"
    return None


def stream_topics(value: Any) -> dict[str, str]:
    """``stream_topics`` entries (``NAME=TOPIC``) as {registry stream: topic}; ValueError naming a bad entry."""
    from flow_anomaly_ros import streams

    others = [s.name for s in streams.all() if s.name not in ("imu", "can")]
    out: dict[str, str] = {}
    for entry in value:
        name, sep, topic = str(entry).partition("=")
        if not sep or not topic.strip():
            raise ValueError(f"stream_topics entry {entry!r} is not NAME=TOPIC (e.g. gnss=gps/fix)")
        if name not in others:
            raise ValueError(f"stream_topics entry {entry!r}: {name!r} is not a registry stream ({', '.join(others)})")
        if name in out:
            raise ValueError(f"stream_topics names {name!r} twice")
        out[name] = topic.strip()
    return out


def _check_stream_topics(value: Any) -> str | None:
    try:
        stream_topics(value)
    except ValueError as exc:
        return str(exc)
    return None


PARAMS: tuple[Param, ...] = (
    Param("model_dir", "", "trained time-series model directory (written by `flow-anomaly ts train`)"),
    Param("dbc_file", "", "DBC file that decodes the CAN frames (empty: the DBC recorded in the model)"),
    Param(
        "contributions",
        "anomalous",
        "which windows get per-feature contributions, published on ~/explanation right after their score on ~/score: "
        "anomalous ones (the why of a flag), all, or none (occlusion attribution: one batched model pass over d + 1 "
        "rows, ~4x the cost of the score)",
        choices=CONTRIBUTIONS,
    ),
    Param("imu_topics", ["imu/data"], "sensor_msgs/Imu topics, one per IMU source", check=_check_topics),
    Param("imu_sources", ["imu"], "model source name of each entry of imu_topics (same length)"),
    Param("can_topic", "from_can_bus", "can_msgs/msg/Frame topic of ros2_socketcan (empty: no CAN input)"),
    Param(
        "stream_topics",
        ["gnss=gps/fix"],
        "topics of the other registry streams (flow_anomaly_ros.streams), NAME=TOPIC; a stream is subscribed only "
        "when the model reads it",
        check=_check_stream_topics,
    ),
    Param("input_qos", "sensor_data", "QoS profile of the input subscriptions", choices=QOS_NAMES),
    Param("input_qos_depth", 100, "history depth of the inputs (0: the profile's default)", min=0, max=100000),
    Param("output_qos", "reliable", "QoS profile of ~/score and ~/score_value", choices=QOS_NAMES),
    Param("output_qos_depth", 10, "history depth of the outputs", min=1, max=10000),
    Param("publish_score_value", False, "also publish the bare score on ~/score_value (std_msgs/Float32)"),
    Param("frame_id", "base_link", "header.frame_id of published scores"),
    Param(
        "stamp_source",
        "header",
        "time of a message: its header stamp, or the node clock at receipt (for drivers that leave it zero)",
        choices=("header", "receipt"),
    ),
    Param(
        "input_batch_s",
        0.0,
        "after a message, wait this long and take the topic's backlog at once (fewer executor wake-ups)",
        min=0.0,
        max=0.02,
    ),
    Param(
        "input_thread",
        True,
        "take input messages on a thread of the node's own (false: rclpy executor callbacks, ~5x the CPU per message)",
    ),
    Param("queue_size", 10000, "bounded input queue between callbacks and scoring (full: drop and count)", min=8),
    Param(
        "max_input_wait_s",
        0.5,
        "scoring waits for every input topic, except one silent this long plus its own message period (wall time)",
        min=0.0,
        max=10.0,
    ),
    Param("clock_jump_back_s", 1.0, "a stamp this far behind the newest one is a clock jump: reset", min=0.001),
    Param(
        "input_timeout_s", 1.0, "all inputs silent this long (node clock): advance time so windows go STALE", min=0.0
    ),
    Param(
        "thread_priority",
        0,
        "SCHED_FIFO real-time priority of all the node process's threads at activation (0: normal scheduling)",
        min=0,
        max=99,
    ),
    Param(
        "cpu_affinity",
        [],
        "CPUs to pin all the node process's threads to at activation, e.g. [3] (empty: any CPU); see scheduling.py",
        check=cpu_list_problem,
    ),
)


def param_problems(values: dict[str, Any], frame_missing: str | None) -> list[str]:
    """Problems between parameters (each one alone is checked by its Param); ``frame_missing`` says why the
    can_msgs Frame type cannot be imported, if it cannot."""
    problems = []
    if not values["model_dir"]:
        problems.append("model_dir is empty: give the directory written by `flow-anomaly ts train`")
    if len(values["imu_sources"]) != len(values["imu_topics"]):
        problems.append(
            f"imu_sources has {len(values['imu_sources'])} entries but imu_topics has {len(values['imu_topics'])}"
        )
    if len(set(values["imu_sources"])) != len(values["imu_sources"]):
        problems.append("imu_sources must be unique")
    if values["dbc_file"] and not Path(values["dbc_file"]).is_file():
        problems.append(f"dbc_file={values['dbc_file']!r} does not exist")
    if values["can_topic"] and frame_missing:
        problems.append(frame_missing)
    return problems
