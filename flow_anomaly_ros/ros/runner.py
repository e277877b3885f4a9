"""``flow-anomaly up``: the vehicle nodes in ONE process, for machines without ``ros2 launch`` (pip installs).

Starts the same node classes that ``vehicle.launch.py`` starts as separate executables, with the same parameter
files (``config/camera_anomaly.yaml``, ``config/timeseries_anomaly.yaml`` unless ``--config`` names others), on one
``MultiThreadedExecutor``; each node keeps its own worker threads, so a slow camera frame never delays IMU/CAN
scoring. SIGINT (Ctrl-C) and SIGTERM stop it cleanly: nodes are deactivated, their workers joined, exit code 0.

Examples::

    flow-anomaly up                                   # camera + time-series nodes with the installed configs
    flow-anomaly up --nodes camera --config my_camera.yaml -p camera_anomaly_node:model_path:=models/seg
    flow-anomaly up --namespace car1 --use-sim-time -r image:=/camera/image_raw

The parameter files use the node names as keys, exactly as with ``ros2 launch``; with ``--namespace``, bare keys
(``timeseries_anomaly_node:``) are read as ``/**/timeseries_anomaly_node`` so that they still apply.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flow_anomaly_ros.share import config_dir


@dataclass(frozen=True)
class NodeEntry:
    module: str
    class_name: str
    config_file: str  # default parameter file under the package's config/ directory


NODES: dict[str, NodeEntry] = {
    "camera": NodeEntry("flow_anomaly_ros.ros.camera_node", "CameraAnomalyNode", "camera_anomaly.yaml"),
    "timeseries": NodeEntry("flow_anomaly_ros.ros.timeseries_node", "TimeseriesAnomalyNode", "timeseries_anomaly.yaml"),
}
DEFAULT_NODES = ("camera", "timeseries")


def node_parameters(params_file: str | Path, node_name: str) -> dict:
    """The ``ros__parameters`` for ``node_name`` in a parameter file, whatever key style it uses.

    Keys may be ``/**``, ``/**/name``, ``name`` or ``/ns/name``; all sections that name the node (or ``/**``) are
    merged in file order, later ones winning, as rcl does. Used by the launch files, which pass the result as a
    dict so that a file keyed by the bare node name still applies when a ``namespace`` is given (rcl reads a bare
    ``name`` key as ``/name`` and would silently ignore it for ``/ns/name``).
    """
    import yaml

    data = yaml.safe_load(Path(params_file).read_text()) or {}
    out: dict = {}
    for key, section in data.items():
        if (key == "/**" or str(key).rstrip("/").rsplit("/", 1)[-1] == node_name) and isinstance(section, dict):
            out.update(section.get("ros__parameters") or {})
    return out


def launch_parameters(*sections: dict) -> tuple[dict, list[str]]:
    """``sections`` merged (later wins) into what a launch_ros ``Node`` can take: ``(parameters, ros_arguments)``.

    launch_ros infers an array parameter's type from its elements, so an empty list (``cpu_affinity: []``) raises
    "Expected 'value' to be one of [float,int,str,bool,bytes], but got '()'" (Humble to rolling) and the launch dies
    before any node starts. Empty lists are passed as ``-p name:=[]`` ros arguments instead, which the node reads as
    the empty list (``Param.coerce``); nested dicts become dotted names, as launch_ros does.
    """
    merged: dict = {}

    def flatten(section: dict, prefix: str = "") -> None:
        for key, value in section.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                flatten(value, f"{name}.")
            else:
                merged[name] = value

    for section in sections:
        flatten(section)
    empty = [name for name, value in merged.items() if isinstance(value, (list, tuple)) and len(value) == 0]
    parameters = {name: value for name, value in merged.items() if name not in empty}
    ros_args = [arg for name in empty for arg in ("-p", f"{name}:=[]")]
    return parameters, ros_args


def any_namespace_copy(params_file: Path, out_dir: Path) -> Path:
    """A copy of a parameter file whose bare node-name keys (``name:``) become ``/**/name:`` (any namespace)."""
    import yaml

    data = yaml.safe_load(params_file.read_text()) or {}
    renamed = {(k if str(k).startswith("/") else f"/**/{k}"): v for k, v in data.items()}
    out = out_dir / params_file.name
    out.write_text(yaml.safe_dump(renamed, sort_keys=False))
    return out


def parse_nodes(text: str) -> list[str]:
    """``camera,timeseries`` → ``["camera", "timeseries"]``; unknown names are a UserError listing the valid ones."""
    from flow_anomaly_ros.cli import UserError

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NODES]
    if unknown or not names:
        raise UserError(f"--nodes: unknown {unknown or 'empty list'}; choose from {', '.join(NODES)}")
    return list(dict.fromkeys(names))


def ros_arguments(args: argparse.Namespace, nodes: Sequence[str]) -> list[str]:
    """The rclpy argument vector: params files, ``-p`` overrides, remaps, namespace, use_sim_time."""
    from flow_anomaly_ros.cli import UserError

    files = [Path(f) for f in args.config] if args.config else [config_dir() / NODES[n].config_file for n in nodes]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"parameter file(s) not found: {', '.join(missing)}")
    if args.namespace:  # bare `name:` keys would not match /namespace/name (see node_parameters)
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="flow_anomaly_up_"))
        files = [any_namespace_copy(f, tmp) for f in files]
    argv = ["flow-anomaly-up", "--ros-args"]
    for f in files:
        argv += ["--params-file", str(f)]
    for item in args.param:
        if ":=" not in item:
            raise UserError(f"-p/--param takes [NODE:]NAME:=VALUE, got {item!r}")
        argv += ["-p", item]
    for item in args.remap:
        if ":=" not in item:
            raise UserError(f"-r/--remap takes FROM:=TO, got {item!r}")
        argv += ["-r", item]
    if args.namespace:
        argv += ["-r", "__ns:=/" + args.namespace.strip("/")]
    if args.use_sim_time:
        argv += ["-p", "use_sim_time:=true"]
    argv += ["--log-level", args.log_level]
    return argv


def _node_classes(nodes: Sequence[str]) -> list[type]:
    from flow_anomaly_ros.cli import UserError

    classes = []
    for name in nodes:
        entry = NODES[name]
        try:
            module = importlib.import_module(entry.module)
        except ImportError as exc:
            raise UserError(f"cannot start the {name} node: {exc}") from exc
        classes.append(getattr(module, entry.class_name))
    return classes


def run(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.ros.managed_node import run_node

    nodes = parse_nodes(args.nodes)
    argv = ros_arguments(args, nodes)
    classes = _node_classes(nodes)  # import errors (e.g. missing message types) before rclpy starts
    print(f"flow-anomaly up: starting {', '.join(nodes)} ({' '.join(argv[2:])})", flush=True)
    threads = args.threads or 2 + 2 * len(classes)
    return run_node(lambda: [cls() for cls in classes], args=argv, threads=threads)


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Start the vehicle nodes in one process (one multi-threaded executor) with the same parameter "
        "files as vehicle.launch.py, for machines without `ros2 launch`. Stop with Ctrl-C or SIGTERM (exit code 0).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Nodes: " + ", ".join(f"{k} ({v.class_name}, config/{v.config_file})" for k, v in NODES.items()),
    )
    parser.add_argument(
        "--nodes",
        default=",".join(DEFAULT_NODES),
        help=f"comma-separated nodes to start (default: {','.join(DEFAULT_NODES)})",
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="FILE",
        help="parameter YAML file(s) (keys are node names); default: the package's config file of each node",
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="[NODE:]NAME:=VALUE",
        help="parameter override, as ros2 run's -p (repeatable), e.g. camera_anomaly_node:model_path:=models/seg",
    )
    parser.add_argument(
        "-r", "--remap", action="append", default=[], metavar="FROM:=TO", help="topic remapping (repeatable)"
    )
    parser.add_argument("--namespace", default="", help="namespace for every node (like ros2 launch's namespace)")
    parser.add_argument("--use-sim-time", action="store_true", help="use /clock (for bag replay with --clock)")
    parser.add_argument("--threads", type=int, default=0, help="executor threads (default: 2 + 2 per node)")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warn", "error", "fatal"), help="ROS log level"
    )
    parser.set_defaults(func=run)
