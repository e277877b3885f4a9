"""Camera anomaly node only: ``ros2 launch flow_anomaly_ros camera.launch.py image_topic:=/camera/image_raw``.

Starts ``camera_anomaly_node`` with ``config/camera_anomaly.yaml``; the arguments below override the file (an empty
``camera_model`` keeps the file's ``model_path``). Outputs: ``<namespace>/camera_anomaly_node/{mask,overlay,summary}``
(+ ``score_map``/``semantic`` when enabled in the YAML) and ``/diagnostics``. Also included by ``vehicle.launch.py``.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from flow_anomaly_ros.ros.runner import launch_parameters, node_parameters
from launch import LaunchDescription

PACKAGE = "flow_anomaly_ros"

ARGUMENTS = (
    ("namespace", "", "namespace for the node (its outputs become <namespace>/camera_anomaly_node/...)"),
    ("use_sim_time", "false", "use /clock (true when replaying a bag with --clock)"),
    ("image_topic", "/camera/image_raw", "input sensor_msgs/Image topic (CompressedImage: <topic>/compressed)"),
    ("camera_transport", "raw", "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage, jpeg/png)"),
    ("camera_model", "", "segmentation model directory or .onnx file; empty = model_path of the params file"),
    ("camera_backend", "auto", "inference backend: auto, tensorrt, onnxruntime or torch"),
    ("camera_device", "cpu", "cpu, cuda, cuda:N or auto"),
    ("camera_params_file", "", "parameter YAML of the camera node; empty = the installed config/camera_anomaly.yaml"),
    ("log_level", "info", "ROS log level of the node (debug, info, warn, error)"),
)


def _camera_node(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = get("camera_params_file") or PathJoinSubstitution(
        [FindPackageShare(PACKAGE), "config", "camera_anomaly.yaml"]
    ).perform(context)
    overrides = {
        "use_sim_time": get("use_sim_time").lower() in ("true", "1", "yes"),
        "image_topic": get("image_topic"),
        "transport": get("camera_transport"),
        "backend": get("camera_backend"),
        "device": get("camera_device"),
    }
    if get("camera_model"):
        overrides["model_path"] = get("camera_model")
    parameters, empty_lists = launch_parameters(node_parameters(params_file, "camera_anomaly_node"), overrides)
    return [
        Node(
            package=PACKAGE,
            executable="camera_anomaly_node",
            name="camera_anomaly_node",
            namespace=get("namespace"),
            parameters=[parameters],
            ros_arguments=["--log-level", get("log_level"), *empty_lists],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=text) for n, d, text in ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=_camera_node)])
