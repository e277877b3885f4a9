"""``flow-anomaly up``: the nodes in one process with the package's parameter files; clean SIGINT/SIGTERM shutdown."""

from __future__ import annotations

import signal
import time

import pytest
from camera_testutil import camera_model_dir, scene_frames
from rosutil import REPO, spin_until, start_python, stop_process

from flow_anomaly_ros.cli import build_parser, main

pytestmark = pytest.mark.ros


def _ros_argv(*cli_args: str) -> list[str]:
    from flow_anomaly_ros.ros.runner import parse_nodes, ros_arguments

    args = build_parser().parse_args(["up", *cli_args])
    return ros_arguments(args, parse_nodes(args.nodes))


def test_default_parameter_files_are_the_launch_files_ones():
    from flow_anomaly_ros.ros.runner import config_dir

    argv = _ros_argv()
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "--params-file"]
    assert files == [str(config_dir() / "camera_anomaly.yaml"), str(config_dir() / "timeseries_anomaly.yaml")]
    assert config_dir() == REPO / "config" or (config_dir() / "camera_anomaly.yaml").is_file()  # source or install
    argv = _ros_argv("--nodes", "camera", "--namespace", "/car1/", "--use-sim-time", "-r", "image:=/cam", "-p", "x:=1")
    assert argv[:2] == ["flow-anomaly-up", "--ros-args"]
    assert argv[argv.index("__ns:=/car1") - 1 : argv.index("__ns:=/car1") + 1] == ["-r", "__ns:=/car1"]
    for pair in (["-p", "use_sim_time:=true"], ["-r", "image:=/cam"], ["-p", "x:=1"]):
        assert any(argv[i : i + 2] == pair for i in range(len(argv))), pair


@pytest.mark.parametrize(
    ("cli_args", "message"),
    [
        (["--nodes", "camera,radar"], "unknown ['radar']"),
        (["--config", "/nonexistent/params.yaml"], "parameter file(s) not found"),
        (["-p", "model_path=x"], "takes [NODE:]NAME:=VALUE"),
    ],
)
def test_user_mistakes_are_clear_errors(cli_args, message, capsys):
    assert main(["up", *cli_args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sig", "nodes", "namespace"), [(signal.SIGTERM, "camera,timeseries", ""), (signal.SIGINT, "camera", "up1")]
)
def test_up_runs_the_nodes_in_one_process_and_stops_cleanly(ros_node, tmp_path, sig, nodes, namespace):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from flow_anomaly_ros.ros.image_conversion import array_to_image
    from flow_anomaly_ros.ros.qos import qos_from_name

    cli = ["-m", "flow_anomaly_ros.cli", "up", "--nodes", nodes, "-p", "diagnostics_period_s:=0.2"]
    if namespace:  # a user's own parameter file keyed by the bare node name must still apply inside the namespace
        config = tmp_path / "camera.yaml"
        config.write_text(
            "camera_anomaly_node:\n  ros__parameters:\n"
            f"    model_path: '{camera_model_dir()}'\n    backend: onnxruntime\n    image_topic: /up_test/image\n"
        )
        cli += ["--config", str(config), "--namespace", namespace]
    else:
        cli += ["-p", f"camera_anomaly_node:model_path:={camera_model_dir()}"]
        cli += ["-p", "camera_anomaly_node:backend:=onnxruntime", "-r", "image:=/up_test/image"]
    prefix = f"/{namespace}" if namespace else ""
    proc = start_python(cli)
    try:
        masks, names = [], set()
        ros_node.create_subscription(
            Image, f"{prefix}/camera_anomaly_node/mask", masks.append, qos_from_name("reliable", 1)
        )
        on_diagnostics = lambda m: names.update(s.name for s in m.status)  # noqa: E731
        ros_node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        pub = ros_node.create_publisher(Image, "/up_test/image", qos_from_name("reliable", 1))
        assert spin_until(ros_node, lambda: pub.get_subscription_count() > 0, timeout=90.0), stop_process(proc)
        frame = array_to_image(scene_frames(1)[0].image, "rgb8")

        def published_and_received() -> bool:
            pub.publish(frame)
            return spin_until(ros_node, lambda: bool(masks), timeout=1.0)

        assert spin_until(ros_node, published_and_received, timeout=30.0)
        expected = {f"{prefix}/{name}_anomaly_node" for name in nodes.split(",")}
        assert spin_until(ros_node, lambda: expected <= names, timeout=20.0), names
        assert proc.poll() is None
    finally:
        t0 = time.monotonic()
        out = stop_process(proc, sig=sig, timeout=20.0)
        stopped_in = time.monotonic() - t0
    assert proc.returncode == 0, out
    assert stopped_in < 15.0
    assert "Traceback" not in out, out
    assert f"starting {nodes.replace(',', ', ')}" in out
