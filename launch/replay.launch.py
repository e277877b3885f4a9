"""Replay a rosbag2 recording through the anomaly nodes with simulated time.

    ros2 launch flow_anomaly_ros replay.launch.py bag:=recordings/drive1 rate:=1.0 rviz:=true

Plays the bag with ``flow-anomaly bag play BAG --clock`` (the rosbags-based player of this package, which also works
where ``ros2 bag`` is missing; it holds playback until the played topics have a subscriber, so the nodes see the
first frames) and starts ``vehicle.launch.py`` with ``use_sim_time:=true``. All vehicle.launch.py arguments apply.
"""

import importlib.util
from pathlib import Path

from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackagePrefix

from launch import LaunchDescription

PACKAGE = "flow_anomaly_ros"
HERE = Path(__file__).resolve().parent

BAG_DESCRIPTION = "rosbag2 directory (or .mcap / .db3 file) to play (required)"
OWN_ARGUMENTS = (
    ("rate", "1.0", "playback speed factor"),
    ("loop", "false", "repeat the bag until interrupted"),
    ("clock_hz", "40.0", "rate of /clock published from the bag time"),
)


def _vehicle_arguments() -> list:
    spec = importlib.util.spec_from_file_location("vehicle_launch", HERE / "vehicle.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [arg for arg in module.all_arguments() if arg[0] != "use_sim_time"]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument("bag", description=BAG_DESCRIPTION)]  # no default: required
    declared += [
        DeclareLaunchArgument(n, default_value=d, description=text)
        for n, d, text in (*OWN_ARGUMENTS, *_vehicle_arguments())
    ]
    player = [PathJoinSubstitution([FindPackagePrefix(PACKAGE), "lib", PACKAGE, "flow-anomaly"]), "bag", "play"]
    player += [LaunchConfiguration("bag"), "--clock", LaunchConfiguration("clock_hz")]
    player += ["--rate", LaunchConfiguration("rate"), "--wait-for-subscribers", "1"]
    loop = LaunchConfiguration("loop")
    vehicle = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(HERE / "vehicle.launch.py")),
        launch_arguments={"use_sim_time": "true"}.items(),
    )
    play_once = ExecuteProcess(cmd=player, name="bag_play", output="screen", condition=UnlessCondition(loop))
    play_loop = ExecuteProcess(cmd=[*player, "--loop"], name="bag_play", output="screen", condition=IfCondition(loop))
    return LaunchDescription([*declared, vehicle, play_once, play_loop])
