"""Offline training job as a node: ``synthesis_trainer_node`` (MAF negatives → fine-tuning → ONNX → engine).

    ros2 launch flow_anomaly_ros offline_training.launch.py training_params_file:=job.yaml image_topic:=/cam/image
    ros2 service call /synthesis_trainer_node/start std_srvs/srv/Trigger     # or /resume, /stop

Starts the node with ``config/synthesis_trainer.yaml`` (or ``training_params_file``): what to gather (``source``:
topic, bag, directory or procedural scenes), MAF and fine-tuning settings, ``work_dir``. ``image_topic`` remaps the
node's ``image`` input, which is read only with ``source: topic`` (which also needs ``base_model`` for
pseudo-labels). Progress is on ``~/status`` (``flow_anomaly_ros/msg/TrainingStatus``) and ``/diagnostics``; see
docs/synthesis.md. Typically run on a workstation next to ``replay.launch.py``, not on the vehicle.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from flow_anomaly_ros.ros.runner import launch_parameters, node_parameters
from launch import LaunchDescription

PACKAGE = "flow_anomaly_ros"

ARGUMENTS = (
    ("namespace", "", "namespace for the node"),
    ("use_sim_time", "false", "use /clock (true when gathering frames from a replayed bag)"),
    ("image_topic", "", "image topic to gather inlier frames from; empty = the params file's"),
    ("training_params_file", "", "parameter YAML; empty = the installed config/synthesis_trainer.yaml"),
    ("log_level", "info", "ROS log level of the node (debug, info, warn, error)"),
)


def _trainer_node(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = get("training_params_file") or PathJoinSubstitution(
        [FindPackageShare(PACKAGE), "config", "synthesis_trainer.yaml"]
    ).perform(context)
    remaps = [("image", get("image_topic"))] if get("image_topic") else []
    parameters, empty_lists = launch_parameters(
        node_parameters(params_file, "synthesis_trainer_node"),
        {"use_sim_time": get("use_sim_time").lower() in ("true", "1", "yes")},
    )
    return [
        Node(
            package=PACKAGE,
            executable="synthesis_trainer_node",
            name="synthesis_trainer_node",
            namespace=get("namespace"),
            parameters=[parameters],
            remappings=remaps,
            ros_arguments=["--log-level", get("log_level"), *empty_lists],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=text) for n, d, text in ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=_trainer_node)])
