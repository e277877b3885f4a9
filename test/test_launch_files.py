"""Launch files, parameter files and the RViz layout: they load, refer only to what is installed, and are documented.

``launch``/``launch_ros`` are not on PyPI (tools/setup.sh installs them from ../shared/vendor; test_launch_service.py
runs every launch file under a real LaunchService). Here the launch files are also checked as
Python source (compile + AST): every executable they start is installed (CMakeLists.txt ``install(PROGRAMS)`` and
setup.py entry points), every parameter/RViz file they name exists, every ``DeclareLaunchArgument`` has a
description, and every argument is documented in docs/camera_node.md. Where launch_pytest imports (a ROS 2
workspace), ``vehicle.launch.py`` is started for real and its topics are checked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_DIR = REPO / "launch"
CONFIG_DIR = REPO / "config"
PACKAGE = "flow_anomaly_ros"
EXPECTED_LAUNCH_FILES = (
    "vehicle.launch.py",
    "camera.launch.py",
    "timeseries.launch.py",
    "replay.launch.py",
    "offline_training.launch.py",
)
EXTERNAL_EXECUTABLES = {("rviz2", "rviz2")}  # (package, executable) started from other packages
LAUNCH_FILES = [LAUNCH_DIR / name for name in EXPECTED_LAUNCH_FILES]
# launch files that re-declare the arguments of the files they include (so --show-args lists them all)
INCLUDES = {
    "vehicle.launch.py": ("camera.launch.py", "timeseries.launch.py"),
    "replay.launch.py": ("vehicle.launch.py",),
}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called == name:
                out.append(node)
    return out


def _keyword(call: ast.Call, name: str):
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _constants(tree: ast.Module) -> dict[str, object]:
    """Module-level ``NAME = "literal"`` assignments (PACKAGE, descriptions), to resolve names used in calls."""
    out = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
            out[target.id] = node.value.value
    return out


def _value(node, constants: dict[str, object]):
    """The literal value of ``node`` (a constant or a module-level constant's name), else None."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _argument_tables(tree: ast.Module) -> dict[str, tuple]:
    """Module-level ``ARGUMENTS``/``OWN_ARGUMENTS`` tuples of (name, default, description), read without launch."""
    tables = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id.endswith("ARGUMENTS"):
            tables[target.id] = ast.literal_eval(node.value)
    return tables


def declared_arguments(path: Path) -> dict[str, str]:
    """Every launch argument a file declares (its own tables, plus those it pulls in from included files)."""
    tree = _tree(path)
    out: dict[str, str] = {}
    for table in _argument_tables(tree).values():
        for name, _default, description in table:
            out.setdefault(name, description)
    constants = _constants(tree)
    for call in _calls(tree, "DeclareLaunchArgument"):
        if call.args and isinstance(call.args[0], ast.Constant):
            out.setdefault(call.args[0].value, _value(_keyword(call, "description"), constants) or "")
    for included in INCLUDES.get(path.name, ()):
        assert f'"{included}"' in path.read_text(), f"{path.name} should include {included}"
        for name, text in declared_arguments(LAUNCH_DIR / included).items():
            out.setdefault(name, text)
    return out


def installed_executables() -> set[str]:
    """Executables installed into lib/flow_anomaly_ros by CMakeLists.txt that setup.py also provides."""
    cmake = (REPO / "CMakeLists.txt").read_text()
    block = re.search(r"install\(PROGRAMS(.*?)DESTINATION", cmake, re.S)
    assert block, "CMakeLists.txt has no install(PROGRAMS ...)"
    programs = {Path(p).name for p in block.group(1).split()}
    for name in programs:
        assert (REPO / "scripts" / name).is_file(), f"CMakeLists installs scripts/{name}, which does not exist"
    setup = (REPO / "setup.py").read_text()
    entry_points = set(re.findall(r'"([\w-]+) = flow_anomaly_ros', setup)) | set(
        re.findall(r'"(\w+)": "flow_anomaly_ros\.', setup)
    )
    return programs & (entry_points | {"flow-anomaly"})


def test_every_launch_file_exists_and_compiles_with_a_generate_function():
    for path in LAUNCH_FILES:
        assert path.is_file(), f"missing {path.name}"
        compile(path.read_text(), str(path), "exec")
        names = {n.name for n in _tree(path).body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in names, path.name


def test_launch_files_start_only_installed_executables():
    installed = installed_executables()
    assert {"camera_anomaly_node", "timeseries_anomaly_node", "synthesis_trainer_node"} <= installed
    started = set()
    for path in LAUNCH_FILES:
        tree = _tree(path)
        constants = _constants(tree)
        for call in _calls(tree, "Node"):
            pair = (_value(_keyword(call, "package"), constants), _value(_keyword(call, "executable"), constants))
            assert all(isinstance(v, str) for v in pair), f"{path.name}:{call.lineno}: package/executable not literal"
            if pair[0] == PACKAGE:
                assert pair[1] in installed, f"{path.name} starts {pair[1]}, which is not installed"
                started.add(pair[1])
            else:
                assert pair in EXTERNAL_EXECUTABLES, f"{path.name} starts unknown {pair}"
    assert {"camera_anomaly_node", "timeseries_anomaly_node", "synthesis_trainer_node"} <= started


def test_replay_plays_the_bag_with_the_installed_cli():
    from flow_anomaly_ros.cli import build_parser

    text = (LAUNCH_DIR / "replay.launch.py").read_text()
    assert '"flow-anomaly"' in text and "flow-anomaly" in installed_executables()
    cmd = ["bag", "play", "some.mcap", "--clock", "40.0", "--rate", "1.0", "--wait-for-subscribers", "1", "--loop"]
    for flag in cmd:
        if flag.startswith("--"):
            assert f'"{flag}"' in text or (flag == "--loop" and '"--loop"' in text), flag
    args = build_parser().parse_args(cmd)  # the flags the launch file passes exist in `flow-anomaly bag play`
    assert args.clock == 40.0 and args.wait_for_subscribers == 1 and args.loop
    assert '"use_sim_time": "true"' in text


def test_parameter_and_rviz_files_named_in_launch_files_exist_and_are_installed():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"install\(DIRECTORY[^)]*\bconfig\b", cmake) and re.search(
        r"install\(DIRECTORY[^)]*\blaunch\b", cmake
    )
    named = set()
    for path in LAUNCH_FILES:
        named |= set(re.findall(r'"([\w.-]+\.(?:yaml|rviz))"', path.read_text()))
    assert {"camera_anomaly.yaml", "timeseries_anomaly.yaml", "synthesis_trainer.yaml", "anomaly.rviz"} <= named
    for name in named:
        assert (CONFIG_DIR / name).is_file(), f"launch files name config/{name}, which does not exist"
    for name in sorted(n for n in named if n.endswith(".yaml")):
        data = yaml.safe_load((CONFIG_DIR / name).read_text())
        assert isinstance(data, dict) and len(data) >= 1, name
        for key, section in data.items():
            assert key.rsplit("/", 1)[-1].endswith("_node") or key == "/**", f"{name}: top key {key!r} is no node"
            assert "ros__parameters" in section, f"{name}: {key} has no ros__parameters"


def test_every_declared_argument_has_a_description_and_is_documented():
    docs = (REPO / "docs" / "camera_node.md").read_text()
    for path in LAUNCH_FILES:
        tree = _tree(path)
        for call in _calls(tree, "DeclareLaunchArgument"):
            description = _keyword(call, "description")
            assert description is not None, f"{path.name}:{call.lineno} DeclareLaunchArgument without description"
        arguments = declared_arguments(path)
        assert arguments, path.name
        for name, text in arguments.items():
            assert isinstance(text, str) and len(text) > 10, f"{path.name}: argument {name} is not described"
            assert f"`{name}`" in docs, f"{path.name}: argument {name} is not documented in docs/camera_node.md"
    vehicle = declared_arguments(LAUNCH_DIR / "vehicle.launch.py")
    for needed in ("namespace", "use_sim_time", "image_topic", "imu_topic", "can_topic", "camera_model"):
        assert needed in vehicle
    assert {"timeseries_model", "camera_backend"} <= set(vehicle)


def test_camera_config_lists_every_node_parameter_with_its_type():
    from flow_anomaly_ros.ros.camera_node import CameraAnomalyNode
    from flow_anomaly_ros.ros.managed_node import COMMON_PARAMS

    data = yaml.safe_load((CONFIG_DIR / "camera_anomaly.yaml").read_text())
    (key,) = data
    assert key == "/**/camera_anomaly_node"  # matches the node in any namespace
    params = data[key]["ros__parameters"]
    table = {p.name: p for p in (*COMMON_PARAMS, *CameraAnomalyNode.PARAMS)}
    assert set(params) == set(table), f"missing: {set(table) - set(params)}; unknown: {set(params) - set(table)}"
    for name, value in params.items():
        assert type(value) is type(table[name].default), f"{name}: {value!r} vs default {table[name].default!r}"
        assert not table[name].problems(value), table[name].problems(value)


def test_rviz_layout_shows_overlay_mask_and_scores_with_matching_qos():
    layout = yaml.safe_load((CONFIG_DIR / "anomaly.rviz").read_text())
    displays = layout["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"]: d for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert set(topics) == {f"/camera_anomaly_node/{n}" for n in ("overlay", "mask", "score_map")}
    for display in topics.values():
        assert display["Topic"]["Reliability Policy"] == "Reliable"  # the node's outputs are reliable
        assert display["Enabled"] is True


def test_launch_descriptions_load_where_launch_imports():
    pytest.importorskip("launch_ros", reason="launch/launch_ros are not installable from PyPI; runs in a ROS 2 install")
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchContext

    for path in LAUNCH_FILES:
        description = PythonLaunchDescriptionSource(str(path)).get_launch_description(LaunchContext())
        declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
        assert declared and all(a.description for a in declared), path.name


try:
    import launch_pytest
except ImportError:
    launch_pytest = None

if launch_pytest is not None:  # pragma: no cover - runs only in a ROS 2 workspace
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription

    @launch_pytest.fixture
    def vehicle_launch():
        from camera_testutil import camera_model_dir

        arguments = {
            "camera_model": str(camera_model_dir()),
            "camera_backend": "onnxruntime",
            "image_topic": "/launch_test/image",
            "namespace": "launch_test",
        }
        include = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(LAUNCH_DIR / "vehicle.launch.py")), launch_arguments=arguments.items()
        )
        return LaunchDescription([include, launch_pytest.actions.ReadyToTest()])

    @pytest.mark.launch(fixture=vehicle_launch)
    def test_vehicle_launch_starts_both_nodes_and_the_camera_outputs_flow():
        import rclpy
        from camera_testutil import scene_frames
        from diagnostic_msgs.msg import DiagnosticArray
        from rosutil import spin_until
        from sensor_msgs.msg import Image

        from flow_anomaly_ros.ros.image_conversion import array_to_image
        from flow_anomaly_ros.ros.qos import qos_from_name

        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node("vehicle_launch_probe", context=context)
        from rclpy.executors import SingleThreadedExecutor

        node.executor_for_test = SingleThreadedExecutor(context=context)
        node.executor_for_test.add_node(node)
        try:
            masks, names = [], set()
            node.create_subscription(Image, "/launch_test/camera_anomaly_node/mask", masks.append, 1)
            node.create_subscription(
                DiagnosticArray, "/diagnostics", lambda m: names.update(s.name for s in m.status), 10
            )
            pub = node.create_publisher(Image, "/launch_test/image", qos_from_name("reliable", 1))
            assert spin_until(node, lambda: pub.get_subscription_count() > 0, timeout=60.0)
            frame = array_to_image(scene_frames(1)[0].image, "rgb8")

            def published_and_received() -> bool:
                pub.publish(frame)
                return spin_until(node, lambda: bool(masks), timeout=1.0)

            assert spin_until(node, published_and_received, timeout=60.0)
            assert spin_until(
                node,
                lambda: {"/launch_test/camera_anomaly_node", "/launch_test/timeseries_anomaly_node"} <= names,
                timeout=30.0,
            ), names
        finally:
            node.executor_for_test.shutdown()
            node.destroy_node()
            rclpy.try_shutdown(context=context)

else:

    def test_vehicle_launch_starts_both_nodes_and_the_camera_outputs_flow():
        # Not on PyPI; the vendored jazzy launch_testing (which launch_pytest needs) registers a pytest plugin whose
        # pytest_pycollect_makemodule(path, parent) hook this pytest (9.2) refuses, breaking every pytest run, so
        # it is not installed here (tried). The test runs under colcon test on a ROS 2 host with its own pytest.
        pytest.skip("launch_pytest is not installable here (not on PyPI; jazzy launch_testing fails under pytest 9)")


def test_launch_files_read_each_nodes_section_whatever_the_key_style(tmp_path):
    from flow_anomaly_ros.ros.runner import node_parameters

    camera = node_parameters(CONFIG_DIR / "camera_anomaly.yaml", "camera_anomaly_node")
    assert (
        camera
        == yaml.safe_load((CONFIG_DIR / "camera_anomaly.yaml").read_text())["/**/camera_anomaly_node"][
            "ros__parameters"
        ]
    )
    assert "model_dir" in node_parameters(CONFIG_DIR / "timeseries_anomaly.yaml", "timeseries_anomaly_node")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        "/**:\n  ros__parameters: {a: 1, b: 1}\n"
        "camera_anomaly_node:\n  ros__parameters: {b: 2, c: 2}\n"
        "/car/camera_anomaly_node:\n  ros__parameters: {c: 3}\n"
        "other_node:\n  ros__parameters: {a: 9}\n"
    )
    assert node_parameters(mixed, "camera_anomaly_node") == {"a": 1, "b": 2, "c": 3}
    for name in ("camera.launch.py", "timeseries.launch.py", "offline_training.launch.py"):
        assert "node_parameters(params_file" in (LAUNCH_DIR / name).read_text(), name  # namespace-proof


def test_launch_parameters_pass_empty_lists_as_ros_arguments():
    from flow_anomaly_ros.ros.runner import launch_parameters, node_parameters

    file_section = node_parameters(CONFIG_DIR / "timeseries_anomaly.yaml", "timeseries_anomaly_node")
    assert file_section["cpu_affinity"] == []  # the value launch_ros cannot type
    params, ros_args = launch_parameters(file_section, {"use_sim_time": True, "imu_topics": ["/imu"]})
    assert "cpu_affinity" not in params and ros_args == ["-p", "cpu_affinity:=[]"]
    assert params["imu_topics"] == ["/imu"] and params["use_sim_time"] is True
    assert not any(isinstance(v, (list, tuple)) and not v for v in params.values())
    # later sections win, also over an empty list; nested sections become dotted names
    assert launch_parameters({"a": [], "m": {"p": 1}}, {"a": [3]}) == ({"a": [3], "m.p": 1}, [])
    assert launch_parameters({"a": [1]}, {"a": []}) == ({}, ["-p", "a:=[]"])
