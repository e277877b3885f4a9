"""camera_anomaly_node on a vehicle, over real rclpy: /diagnostics during a long configure (an engine build), a WARN
for input publishers with incompatible QoS, and model paths relative to the package rather than the working directory.

The node runs in this process on the executor ``run_node`` uses (multi-threaded, 2 threads), so the test can hold it
in ``on_configure`` exactly as a TensorRT engine build does, and read what it publishes meanwhile.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from camera_testutil import camera_model_dir

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
BUILD_S = 3.0


class _Spinner:
    """The node under test and a probe node in one context, spun by a MultiThreadedExecutor in a thread."""

    def __init__(self, make_node) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = make_node(self.context)
        self.probe = rclpy.create_node("camera_vehicle_probe", context=self.context)
        self.statuses: list[tuple[float, int, str, dict]] = []
        self.probe.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)  # run_node's default
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diag(self, msg) -> None:
        for s in msg.status:
            if s.name == self.node.get_fully_qualified_name():
                self.statuses.append((time.monotonic(), s.level[0] if isinstance(s.level, bytes) else s.level,
                                      s.message, {kv.key: kv.value for kv in s.values}))  # fmt: skip

    def wait(self, predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(timeout=10)
        self.node.destroy_node()
        self.probe.destroy_node()
        import rclpy

        rclpy.try_shutdown(context=self.context)


def _camera_node(context, params: dict):
    from rclpy.parameter import Parameter

    from flow_anomaly_ros.ros.camera_node import CameraAnomalyNode

    values = {"diagnostics_period_s": 0.2, "backend": "onnxruntime", **params}
    return CameraAnomalyNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


@pytest.fixture
def model_dir():
    return str(camera_model_dir())


def test_diagnostics_keep_publishing_while_configure_builds_the_engine(model_dir, monkeypatch):
    import flow_anomaly_ros.runtime as runtime

    real_load = runtime.load_backend

    def load_like_an_engine_build(*args, **kwargs):  # the real backend, opened as slowly as a TensorRT build
        time.sleep(BUILD_S)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(runtime, "load_backend", load_like_an_engine_build)
    spinner = _Spinner(lambda ctx: _camera_node(ctx, {"model_path": model_dir}))
    try:
        assert spinner.wait(lambda: spinner.node.lifecycle_state == "active", timeout=60.0), spinner.statuses
        during = [s for s in spinner.statuses if s[2].startswith("configuring")]
        # 0.2 s period over a 3 s configure: the timer ran beside it (it could not in the default callback group)
        assert len(during) >= 5, spinner.statuses
        level, message = during[0][1], during[0][2]
        assert level == 1 and "TensorRT engine" in message and model_dir in message  # WARN, says what it is doing
        assert spinner.wait(lambda: spinner.statuses and not spinner.statuses[-1][2].startswith("configuring"))
    finally:
        spinner.close()


def test_warns_when_input_publishers_have_incompatible_qos(model_dir):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    topic = "/vehicle_qos_test/image_raw"
    params = {"model_path": model_dir, "image_topic": topic, "input_qos": "reliable", "input_timeout_s": 0.0}
    spinner = _Spinner(lambda ctx: _camera_node(ctx, params))
    try:
        assert spinner.wait(lambda: spinner.node.lifecycle_state == "active", timeout=60.0)
        assert spinner.wait(lambda: spinner.statuses and spinner.statuses[-1][1] == 0)  # OK before the publisher
        driver = spinner.probe.create_publisher(Image, topic, qos_profile_sensor_data)  # like v4l2_camera
        assert spinner.wait(lambda: spinner.statuses and "incompatible" in spinner.statuses[-1][2], timeout=20.0)
        _, level, message, values = spinner.statuses[-1]
        assert level == 1 and topic in message and "input_qos=reliable" in message and "sensor_data" in message
        assert "best_effort" in values["incompatible_publishers"] and "camera_vehicle_probe" in message
        spinner.probe.destroy_publisher(driver)
        assert spinner.wait(lambda: "incompatible" not in spinner.statuses[-1][2], timeout=20.0)
    finally:
        spinner.close()


def test_relative_model_path_resolves_against_the_package_not_the_working_directory(tmp_path, monkeypatch):
    from flow_anomaly_ros.ros.camera_node import resolve_model_path

    monkeypatch.chdir(tmp_path)  # ros2 launch starts nodes wherever the user is
    assert resolve_model_path("models/seg_base_mobilenet") == str(REPO / "models" / "seg_base_mobilenet")  # source tree
    prefix = tmp_path / "prefix"
    share = prefix / "share" / "flow_anomaly_ros"
    (share / "models").mkdir(parents=True)
    (share / "models" / "seg_base_mobilenet").symlink_to(REPO / "models" / "seg_base_mobilenet")
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "flow_anomaly_ros"
    marker.parent.mkdir(parents=True)
    marker.touch()
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    installed = share / "models" / "seg_base_mobilenet"
    assert resolve_model_path("models/seg_base_mobilenet") == str(installed)  # the installed share
    (tmp_path / "models" / "seg_base_mobilenet").mkdir(parents=True)
    assert resolve_model_path("models/seg_base_mobilenet") == "models/seg_base_mobilenet"  # the working directory wins
    assert resolve_model_path("/abs/missing") == "/abs/missing" and resolve_model_path("nope") == "nope"


def test_node_configures_with_the_shipped_relative_model_path_from_elsewhere(tmp_path, monkeypatch):
    # the committed base model: it exists in every clone (models/seg_mobilenet only after make demo); it ships
    # safetensors without model.onnx, so the torch backend opens it
    monkeypatch.chdir(tmp_path)
    spinner = _Spinner(lambda ctx: _camera_node(ctx, {"model_path": "models/seg_base_mobilenet", "backend": "torch"}))
    try:
        assert spinner.wait(lambda: spinner.node.lifecycle_state == "active", timeout=60.0), spinner.node.config_error
    finally:
        spinner.close()


def test_rviz_layout_follows_the_namespace():
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("vehicle_launch", REPO / "launch" / "vehicle.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    layout = REPO / "config" / "anomaly.rviz"
    assert module.rviz_config_file(layout, "") == str(layout)
    for ns in ("car1", "/car1/", "fleet/car1"):
        data = yaml.safe_load(Path(module.rviz_config_file(layout, ns)).read_text())
        topics = {d["Topic"]["Value"] for d in data["Visualization Manager"]["Displays"] if "Topic" in d}
        want = ns.strip("/")
        assert topics == {f"/{want}/camera_anomaly_node/{n}" for n in ("overlay", "mask", "score_map")}, topics
