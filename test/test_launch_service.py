"""The launch files executed by the real launch machinery: ``launch``/``launch_ros`` (jazzy, installed into the venv
from ../shared/vendor by tools/setup.sh) under a ``LaunchService``.

Each file is included with real arguments into a service that runs it; the nodes' processes are the installed
executables (a prefix laid out as CMakeLists.txt installs them: ``lib/flow_anomaly_ros/*``, ``share/flow_anomaly_ros/
{launch,config,models}`` and the ament index marker), so ``FindPackageShare``/``FindPackagePrefix`` and launch_ros's
executable lookup resolve exactly as in a colcon install. A probe node waits until every node is on the ROS graph
(rcl parsed the parameter files launch_ros wrote) and reads their parameters back over the parameter services; then
the service is shut down. Any launch exception (e.g. launch_ros rejecting ``cpu_affinity: []``) makes ``run()``
return non-zero, and a process that exits before the shutdown fails the test.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("launch_ros", reason="tools/setup.sh installs launch/launch_ros from ../shared/vendor")

from launch.actions import IncludeLaunchDescription, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessStart
from launch.launch_description_sources import PythonLaunchDescriptionSource

from launch import LaunchDescription, LaunchService

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "flow_anomaly_ros"
NS = f"launch_svc_{os.getpid()}"  # unique: a node left over by another run can never answer for ours
CAMERA = f"/{NS}/camera_anomaly_node"
TIMESERIES = f"/{NS}/timeseries_anomaly_node"


@pytest.fixture(scope="module")
def install_prefix(tmp_path_factory) -> Path:
    """An ament prefix with this package installed the way CMakeLists.txt installs it (links to the source tree)."""
    prefix = tmp_path_factory.mktemp("prefix")
    cmake = (REPO / "CMakeLists.txt").read_text()
    programs = re.search(r"install\(PROGRAMS(.*?)DESTINATION", cmake, re.S).group(1).split()
    directories = re.search(r"install\(DIRECTORY ((?:\w+ )+)DESTINATION share", cmake).group(1).split()
    lib = prefix / "lib" / PACKAGE
    share = prefix / "share" / PACKAGE
    lib.mkdir(parents=True)
    share.mkdir(parents=True)
    for program in programs:
        (lib / Path(program).name).symlink_to(REPO / program)
    for directory in directories:
        (share / directory).symlink_to(REPO / directory)
    (share / "package.xml").symlink_to(REPO / "package.xml")
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    marker.parent.mkdir(parents=True)
    marker.touch()
    return prefix


@pytest.fixture
def launch_env(install_prefix, monkeypatch):
    venv = Path(sys.prefix)
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{install_prefix}{os.pathsep}{venv}")
    monkeypatch.setenv("PATH", f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")  # scripts' python3
    return install_prefix


def _parameter_values(node, executor, full_name: str, names: list[str], timeout: float) -> dict:
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    client = node.create_client(GetParameters, f"{full_name}/get_parameters")
    deadline = time.monotonic() + timeout
    while not client.service_is_ready() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    future = client.call_async(GetParameters.Request(names=names))
    while not future.done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    assert future.done(), f"{full_name}/get_parameters did not answer"
    return {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}


def run_launch_file(name: str, arguments: dict[str, str], nodes: dict[str, list[str]], timeout: float = 120.0):
    """Run ``launch/<name>`` under a LaunchService until ``nodes`` are up; their parameters, started and exited
    process names and the service's return code."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    started: list[str] = []
    exited: list[tuple[str, int]] = []
    service = LaunchService(argv=[], noninteractive=True)
    service.include_launch_description(
        LaunchDescription(
            [
                RegisterEventHandler(OnProcessStart(on_start=lambda event, _ctx: started.append(event.process_name))),
                RegisterEventHandler(
                    OnProcessExit(on_exit=lambda event, _ctx: exited.append((event.process_name, event.returncode)))
                ),
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(str(REPO / "launch" / name)), launch_arguments=arguments.items()
                ),
            ]
        )
    )
    result: dict = {}
    finished = threading.Event()  # run() returned (e.g. the launch description raised): stop waiting

    def probe() -> None:
        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node("launch_service_probe", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not exited and not finished.is_set():
                executor.spin_once(timeout_sec=0.2)
                up = {(ns.rstrip("/") + "/" + n) for n, ns in node.get_node_names_and_namespaces()}
                if set(nodes) <= up:
                    break
            result["up"] = {(ns.rstrip("/") + "/" + n) for n, ns in node.get_node_names_and_namespaces()}
            if set(nodes) <= result["up"]:
                result["params"] = {
                    full: _parameter_values(node, executor, full, names, timeout=30.0) if names else {}
                    for full, names in nodes.items()
                }
        except BaseException as exc:  # reported by the test, never lost in the thread
            result["error"] = exc
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown(context=context)
            while not finished.is_set() and service.shutdown() is None:  # None until run() started its loop
                time.sleep(0.1)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    code = service.run()
    finished.set()
    thread.join(timeout=30)
    if "error" in result:
        raise result["error"]
    return result, started, exited, code


def _check(result, started, exited, code, nodes):
    assert code == 0, f"LaunchService.run() returned {code} (an exception in the launch description, see log)"
    missing = set(nodes) - result.get("up", set())
    assert not missing, f"nodes never appeared on the graph: {missing}; started {started}, exited {exited}"
    # after our shutdown, SIGINT/SIGTERM are fine: as a signal (-2, -15) or as the CLI's 128 + signal exit codes
    early = [(n, rc) for n, rc in exited if rc not in (0, -2, -15, 130, 143)]
    assert not early, f"processes failed: {early}"
    return result["params"]


@pytest.mark.slow
def test_timeseries_launch_starts_the_node_with_the_files_empty_cpu_affinity(launch_env, tmp_path):
    names = ["cpu_affinity", "imu_topics", "model_dir", "use_sim_time", "input_qos_depth"]
    nodes = {TIMESERIES: names}
    args = {"namespace": NS, "imu_topic": "/car/imu", "timeseries_model": str(tmp_path / "ts")}
    params = _check(*run_launch_file("timeseries.launch.py", args, nodes), nodes)[TIMESERIES]
    assert params["cpu_affinity"] in (None, [])  # `-p cpu_affinity:=[]`; the node coerces "not set" to []
    assert params["imu_topics"] == ["/car/imu"] and params["model_dir"] == str(tmp_path / "ts")
    assert params["input_qos_depth"] == 100 and params["use_sim_time"] is False  # from the installed YAML


@pytest.mark.slow
def test_camera_launch_starts_the_node_with_its_arguments(launch_env, tmp_path):
    nodes = {CAMERA: ["model_path", "image_topic", "backend", "use_sim_time"]}
    args = {
        "namespace": NS,
        "camera_model": str(tmp_path / "seg"),
        "image_topic": "/cam/image",
        "camera_backend": "torch",
    }
    params = _check(*run_launch_file("camera.launch.py", args, nodes), nodes)[CAMERA]
    assert params == {
        "model_path": str(tmp_path / "seg"),
        "image_topic": "/cam/image",
        "backend": "torch",
        "use_sim_time": False,
    }


@pytest.mark.slow
def test_vehicle_launch_starts_both_nodes(launch_env, tmp_path):
    nodes = {CAMERA: ["model_path", "use_sim_time"], TIMESERIES: ["cpu_affinity", "use_sim_time", "can_topic"]}
    args = {"namespace": NS, "camera_model": str(tmp_path / "seg"), "can_topic": "/car/can", "rviz": "false"}
    params = _check(*run_launch_file("vehicle.launch.py", args, nodes), nodes)
    assert params[CAMERA]["model_path"] == str(tmp_path / "seg")
    assert params[TIMESERIES]["can_topic"] == "/car/can" and params[TIMESERIES]["cpu_affinity"] in (None, [])


@pytest.mark.slow
def test_replay_launch_plays_the_bag_into_both_nodes_with_sim_time(launch_env, tmp_path):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Imu

    from flow_anomaly_ros.data.bags import BagWriter, make_qos

    bag = tmp_path / "drive"
    with BagWriter(bag) as writer:
        writer.add_topic("/car/imu", "sensor_msgs/msg/Imu", [make_qos(reliable=True, depth=10)])
        for i in range(5):
            writer.write("/car/imu", 1_000_000_000 + i * 10_000_000, bytes(serialize_message(Imu())))
    nodes = {CAMERA: ["use_sim_time"], TIMESERIES: ["use_sim_time", "imu_topics"]}
    args = {"bag": str(bag), "namespace": NS, "imu_topic": "/car/imu", "camera_model": str(tmp_path / "seg")}
    result, started, exited, code = run_launch_file("replay.launch.py", args, nodes)
    params = _check(result, started, exited, code, nodes)
    assert params[CAMERA]["use_sim_time"] is True and params[TIMESERIES]["use_sim_time"] is True
    assert params[TIMESERIES]["imu_topics"] == ["/car/imu"]
    assert any(name.startswith("bag_play") for name in started), started  # the installed flow-anomaly player


@pytest.mark.slow
def test_offline_training_launch_starts_the_trainer(launch_env, tmp_path):
    # on the graph = rcl parsed its parameters; not queried (a busy trainer may not answer within the test)
    nodes = {f"/{NS}/synthesis_trainer_node": []}
    _check(*run_launch_file("offline_training.launch.py", {"namespace": NS}, nodes), nodes)


def test_composition_interfaces_has_the_fields_launch_ros_uses():
    """tools/composition_interfaces (verbatim ros2/rcl_interfaces jazzy .srv files, built by tools/setup.sh) has
    every field launch_ros's LoadComposableNodes reads or writes (a typo there fails only when a load fails)."""
    from composition_interfaces.srv import ListNodes, LoadNode, UnloadNode

    request, response = LoadNode.Request(), LoadNode.Response()
    for name in ("package_name", "plugin_name", "node_name", "node_namespace", "log_level", "remap_rules",
                 "parameters", "extra_arguments"):  # fmt: skip
        assert hasattr(request, name), name
    for name in ("success", "error_message", "full_node_name", "unique_id"):
        assert hasattr(response, name), name
    assert hasattr(UnloadNode.Response(), "error_message") and hasattr(ListNodes.Response(), "full_node_names")
