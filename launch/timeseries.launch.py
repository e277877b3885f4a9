"""Time-series (IMU + CAN) anomaly node only: ``ros2 launch flow_anomaly_ros timeseries.launch.py``.

Starts ``timeseries_anomaly_node`` with ``config/timeseries_anomaly.yaml``; the arguments below override the file
(an empty ``timeseries_model`` keeps the file's ``model_dir``). Output: ``<namespace>/timeseries_anomaly_node/score``
(``flow_anomaly_ros/msg/AnomalyScore``) and ``/diagnostics``. Also included by ``vehicle.launch.py``.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from flow_anomaly_ros.ros.runner import launch_parameters, node_parameters
from launch import LaunchDescription

PACKAGE = "flow_anomaly_ros"

ARGUMENTS = (
    ("namespace", "", "namespace for the node (its output becomes <namespace>/timeseries_anomaly_node/score)"),
    ("use_sim_time", "false", "use /clock (true when replaying a bag with --clock)"),
    ("imu_topic", "", "sensor_msgs/Imu input topic; empty = imu_topics of the params file"),
    ("can_topic", "", "can_msgs/Frame input topic (ros2_socketcan's from_can_bus); empty = the params file's"),
    ("timeseries_model", "", "time-series model directory; empty = model_dir of the params file"),
    ("timeseries_params_file", "", "parameter YAML; empty = the installed config/timeseries_anomaly.yaml"),
    ("log_level", "info", "ROS log level of the node (debug, info, warn, error)"),
)


def _timeseries_node(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = get("timeseries_params_file") or PathJoinSubstitution(
        [FindPackageShare(PACKAGE), "config", "timeseries_anomaly.yaml"]
    ).perform(context)
    overrides: dict = {"use_sim_time": get("use_sim_time").lower() in ("true", "1", "yes")}
    if get("imu_topic"):
        overrides["imu_topics"] = [get("imu_topic")]
    if get("can_topic"):
        overrides["can_topic"] = get("can_topic")
    if get("timeseries_model"):
        overrides["model_dir"] = get("timeseries_model")
    parameters, empty_lists = launch_parameters(node_parameters(params_file, "timeseries_anomaly_node"), overrides)
    return [
        Node(
            package=PACKAGE,
            executable="timeseries_anomaly_node",
            name="timeseries_anomaly_node",
            namespace=get("namespace"),
            parameters=[parameters],
            ros_arguments=["--log-level", get("log_level"), *empty_lists],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=text) for n, d, text in ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=_timeseries_node)])
