"""The lifecycle base: validated parameters, autostart, ERROR diagnostics on failure, recovery by retry."""

from __future__ import annotations

import pytest
from rosutil import spin_until

pytestmark = pytest.mark.ros


def _make_node_class():
    from pathlib import Path

    from flow_anomaly_ros.ros.diagnostics import OK, Health
    from flow_anomaly_ros.ros.managed_node import ManagedAnomalyNode, Param

    class FileNode(ManagedAnomalyNode):
        PARAMS = (
            Param("model_path", "", "file that must exist"),
            Param("rate_hz", 10.0, "a rate", min=0.1, max=100.0),
            Param("mode", "a", "a mode", choices=("a", "b")),
        )

        def configure_core(self, params):
            if not Path(params["model_path"]).is_file():
                raise FileNotFoundError(f"model file not found: {params['model_path']}")

        def health(self):
            return Health(OK, "running", {"rate_hz": self.params["rate_hz"]})

    return FileNode


def _diag_messages(ros_node):
    from diagnostic_msgs.msg import DiagnosticArray

    seen: list = []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: seen.extend(m.status), 10)
    return seen


def test_failed_configuration_reports_error_then_recovers_when_file_appears(ros_node, tmp_path):
    from rclpy.parameter import Parameter

    node_cls = _make_node_class()
    model = tmp_path / "model.bin"
    node = node_cls(
        "file_node",
        context=ros_node.context,
        parameter_overrides=[
            Parameter("model_path", value=str(model)),
            Parameter("retry_period_s", value=0.2),
            Parameter("diagnostics_period_s", value=0.1),
        ],
    )
    ros_node.executor_for_test.add_node(node)
    seen = _diag_messages(ros_node)
    try:
        assert spin_until(ros_node, lambda: any(s.name.endswith("file_node") and s.level == b"\x02" for s in seen))
        error = next(s for s in seen if s.level == b"\x02")
        assert "model file not found" in error.message
        assert node.lifecycle_state == "unconfigured"
        model.write_bytes(b"x")
        assert spin_until(ros_node, lambda: node.lifecycle_state == "active")
        seen.clear()
        assert spin_until(ros_node, lambda: any(s.level == b"\x00" and s.message == "running" for s in seen))
    finally:
        ros_node.executor_for_test.remove_node(node)
        node.destroy_node()


def test_invalid_parameters_are_listed_together(ros_node):
    from rclpy.parameter import Parameter

    from flow_anomaly_ros.ros.managed_node import ParameterError

    node_cls = _make_node_class()
    node = node_cls(
        "bad_params",
        context=ros_node.context,
        parameter_overrides=[
            Parameter("autostart", value=False),
            Parameter("rate_hz", value=1000.0),
            Parameter("mode", value="z"),
        ],
    )
    try:
        with pytest.raises(ParameterError) as info:
            node.read_params()
        assert "rate_hz=1000.0 must be <= 100.0" in str(info.value)
        assert "mode='z' is not one of ['a', 'b']" in str(info.value)
        assert node.lifecycle_state == "unconfigured"
    finally:
        node.destroy_node()


def test_wrong_parameter_types_are_reported_not_fatal_and_ints_serve_as_floats(ros_node, tmp_path):
    """rclpy raises at declaration when an override has another type than a static parameter; ours are declared
    with dynamic typing and checked by the table, so `-p rate_hz:=20` works and `-p mode:=3` is a clear error."""
    from rclpy.parameter import Parameter

    from flow_anomaly_ros.ros.managed_node import ParameterError

    node_cls = _make_node_class()
    model = tmp_path / "model.bin"
    model.write_bytes(b"x")
    good = node_cls(
        "int_for_float",
        context=ros_node.context,
        parameter_overrides=[
            Parameter("autostart", value=False),
            Parameter("model_path", value=str(model)),
            Parameter("rate_hz", value=20),
        ],
    )
    bad = node_cls(
        "wrong_types",
        context=ros_node.context,
        parameter_overrides=[
            Parameter("autostart", value=False),
            Parameter("mode", value=3),
            Parameter("diagnostics_period_s", value="often"),
        ],
    )
    try:
        values = good.read_params()
        assert values["rate_hz"] == 20.0 and isinstance(values["rate_hz"], float)
        with pytest.raises(ParameterError) as info:
            bad.read_params()
        assert "mode=3 has type int, expected str" in str(info.value)
        assert "diagnostics_period_s='often' has type str, expected float" in str(info.value)
    finally:
        good.destroy_node()
        bad.destroy_node()
