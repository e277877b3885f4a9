"""Everything that runs on the car: camera and time-series anomaly nodes (and optionally RViz).

    ros2 launch flow_anomaly_ros vehicle.launch.py image_topic:=/camera/image_raw imu_topic:=/imu/data \\
        can_topic:=/from_can_bus camera_model:=/opt/models/seg timeseries_model:=/opt/models/ts namespace:=anomaly

Includes ``camera.launch.py`` and ``timeseries.launch.py`` (each node with its ``config/*.yaml``; the arguments override
the files) and, with ``rviz:=true``, RViz with ``config/anomaly.rviz``, its topics moved into ``namespace``. Every
argument of the included files is declared here too, so ``ros2 launch flow_anomaly_ros vehicle.launch.py --show-args``
lists them all. Without ``ros2 launch`` (pip installs), ``flow-anomaly up`` starts the same nodes with the same
parameter files.
"""

import importlib.util
import tempfile
from pathlib import Path

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "flow_anomaly_ros"
HERE = Path(__file__).resolve().parent

OWN_ARGUMENTS = (
    ("camera", "true", "start the camera anomaly node"),
    ("timeseries", "true", "start the time-series (IMU/CAN) anomaly node"),
    ("rviz", "false", "start RViz with config/anomaly.rviz (overlay, mask and score images)"),
)


def _arguments_of(launch_file: str) -> tuple:
    spec = importlib.util.spec_from_file_location(launch_file.replace(".", "_"), HERE / launch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARGUMENTS


def all_arguments() -> list[tuple[str, str, str]]:
    """This file's arguments plus those of the included launch files (first description wins)."""
    seen: dict[str, tuple[str, str, str]] = {}
    for arg in (*OWN_ARGUMENTS, *_arguments_of("camera.launch.py"), *_arguments_of("timeseries.launch.py")):
        seen.setdefault(arg[0], arg)
    return list(seen.values())


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=text) for n, d, text in all_arguments()]
    camera = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(HERE / "camera.launch.py")),
        condition=IfCondition(LaunchConfiguration("camera")),
    )
    timeseries = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(HERE / "timeseries.launch.py")),
        condition=IfCondition(LaunchConfiguration("timeseries")),
    )
    rviz = OpaqueFunction(function=_rviz_node, condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription([*declared, camera, timeseries, rviz])


def rviz_config_file(layout: str | Path, namespace: str) -> str:
    """``layout`` (config/anomaly.rviz, whose displays show ``/camera_anomaly_node/...``) with its topics moved into
    ``namespace``, written to a temporary file; the layout itself when there is no namespace."""
    ns = namespace.strip("/")
    if not ns:
        return str(layout)
    text = Path(layout).read_text().replace("Value: /camera_anomaly_node/", f"Value: /{ns}/camera_anomaly_node/")
    out = Path(tempfile.mkdtemp(prefix="flow_anomaly_rviz_")) / "anomaly.rviz"
    out.write_text(text)
    return str(out)


def _rviz_node(context, *args, **kwargs):
    layout = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "anomaly.rviz"]).perform(context)
    return [
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            namespace=LaunchConfiguration("namespace").perform(context),
            arguments=["-d", rviz_config_file(layout, LaunchConfiguration("namespace").perform(context))],
            parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() == "true"}],
            output="screen",
        )
    ]
