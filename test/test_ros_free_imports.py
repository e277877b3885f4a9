"""The ROS-free core imports no ROS code: every module imports with rclpy and the message packages unimportable.

ROS-free (:data:`ROS_FREE_PACKAGES`): every package of ``flow_anomaly_ros`` except the three that exist to run or read
the nodes, plus the top-level modules. Not ROS-free, by design:

- ``flow_anomaly_ros.ros``: the nodes, message conversion into ROS types, bag player/recorder, the runner;
- ``flow_anomaly_ros.demo``: runs the nodes over DDS (``live.py``) and decodes what they published (``evaluate.py``);
- ``flow_anomaly_ros.fleet``: evaluates bags with the camera node's ``FrameProcessor`` (``ros.camera_pipeline``).

Two checks, because either alone misses something: the source of every ROS-free module is read with ``ast`` and no
``import`` in it (lazy ones inside functions included, which is how ``ts train --bag`` needed rclpy) may name a ROS
package or one of the three above; and every module is imported in a fresh interpreter whose ``sys.meta_path``
refuses the ROS packages, which catches what the text cannot show (an import hidden behind ``importlib``). Both
guards are shown to fail on a module that imports rclpy, and ``ts train --bag`` runs end to end under the import
guard.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "flow_anomaly_ros"
ROS_SIDE = ("ros", "demo", "fleet")  # subpackages that run or read the nodes (see the module docstring)
ROS_FREE_PACKAGES = sorted(
    p.name for p in (REPO / PACKAGE).iterdir() if (p / "__init__.py").is_file() and p.name not in ROS_SIDE
)
# Python packages of ROS 2 (names starting with these are refused), then this package's ROS side
ROS2_PACKAGES = (
    "rclpy",
    "rosidl",
    "rcl_interfaces",
    "rmw",
    "rosbag2_py",
    "sensor_msgs",
    "std_msgs",
    "can_msgs",
    "diagnostic_msgs",
    "builtin_interfaces",
    "geometry_msgs",
    "nav_msgs",
    "lifecycle_msgs",
    f"{PACKAGE}.msg",  # this package's rosidl-generated messages
)
BLOCKED = (*ROS2_PACKAGES, *(f"{PACKAGE}.{name}" for name in ROS_SIDE))

GUARD = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys, traceback

    BLOCKED = tuple(json.loads(sys.argv[1]))

    class RefuseROS(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            for b in BLOCKED:
                if name == b or name.startswith(b + ".") or (b == "rosidl" and name.startswith("rosidl")):
                    raise ModuleNotFoundError(f"ROS module {name} imported by ROS-free code", name=name)
            return None

    sys.meta_path.insert(0, RefuseROS())
    failed = {}
    for mod in json.loads(sys.argv[2]):
        try:
            importlib.import_module(mod)
        except BaseException as exc:
            failed[mod] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if len(sys.argv) > 3:  # then run flow-anomaly with these arguments, still guarded
        from flow_anomaly_ros.cli import main

        rc = main(json.loads(sys.argv[3]))
        failed.update({} if rc == 0 else {"flow-anomaly": f"exit code {rc}"})
    print(json.dumps(failed))
    """
)


def _is_blocked(name: str) -> bool:
    return any(name == b or name.startswith(b + ".") or (b == "rosidl" and name.startswith("rosidl")) for b in BLOCKED)


def ros_free_modules(root: Path = REPO / PACKAGE, packages: list[str] | None = None) -> dict[str, Path]:
    """Dotted name -> file of every module of the ROS-free packages and of the top-level modules."""
    allowed = ROS_FREE_PACKAGES if packages is None else packages
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        sub = path.relative_to(root)
        if len(sub.parts) > 1 and sub.parts[0] not in allowed:
            continue
        parts = [root.name, *sub.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def group_of(module: str) -> str:
    """The ROS-free package a module belongs to, or ``<top-level modules>``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROS_FREE_PACKAGES else "<top-level modules>"


def ros_imports(path: Path, module: str) -> list[str]:
    """``line: name`` of every import in ``path`` (at any depth) that names ROS code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                if path.name == "__init__.py" and node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [target, *(f"{target}.{a.name}" for a in node.names)]
        found += [f"{node.lineno}: {n}" for n in names if _is_blocked(n)]
    return sorted(set(found))


def run_guarded(
    modules: list[str], cli_args: list[str] | None = None, cwd: Path = REPO, blocked: tuple[str, ...] = BLOCKED
) -> dict[str, str]:
    """Import ``modules`` (then run ``flow-anomaly cli_args``) in a fresh interpreter that refuses ``blocked``."""
    argv = [sys.executable, "-c", GUARD, json.dumps(blocked), json.dumps(modules)]
    if cli_args is not None:
        argv.append(json.dumps(cli_args))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_ros_free_list_is_the_package_minus_the_node_side():
    assert {"data", "timeseries", "segmentation", "synthesis", "runtime", "evaluation", "flows"} <= set(
        ROS_FREE_PACKAGES
    )
    assert not set(ROS_SIDE) & set(ROS_FREE_PACKAGES)
    mods = ros_free_modules()
    assert f"{PACKAGE}.data.bag_recording" in mods and f"{PACKAGE}.synthesis.sources" in mods
    assert f"{PACKAGE}.model_store" in mods and not any(m.startswith(f"{PACKAGE}.ros") for m in mods)


def test_no_ros_free_module_imports_ros_code_even_lazily():
    bad = {m: ros_imports(p, m) for m, p in ros_free_modules().items()}
    bad = {m: v for m, v in bad.items() if v}
    assert bad == {}, "ROS imports in ROS-free modules:\n" + json.dumps(bad, indent=1)


@pytest.mark.parametrize("package", [*ROS_FREE_PACKAGES, "<top-level modules>"])
def test_every_ros_free_module_imports_without_ros(package):
    mods = sorted(m for m in ros_free_modules() if group_of(m) == package)
    assert mods
    assert run_guarded(mods) == {}


def test_the_guards_catch_a_module_that_imports_rclpy(tmp_path):
    """Both checks fail on a module that imports ROS code: at the top (import) and inside a function (ast)."""
    pkg = tmp_path / PACKAGE / "core"
    pkg.mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "eager.py").write_text("import rclpy.node\n")
    (pkg / "lazy.py").write_text("def f():\n    from sensor_msgs.msg import Imu\n    return Imu\n")
    (pkg / "via_ros.py").write_text("def g():\n    from ..ros import camera_node\n    return camera_node\n")
    (pkg / "clean.py").write_text("import json\n")
    failed = run_guarded([f"{PACKAGE}.core.eager", f"{PACKAGE}.core.clean"], cwd=tmp_path)
    assert list(failed) == [f"{PACKAGE}.core.eager"] and "ROS module rclpy" in failed[f"{PACKAGE}.core.eager"]
    mods = ros_free_modules(tmp_path / PACKAGE, packages=["core"])
    flagged = {m: ros_imports(p, m) for m, p in mods.items()}
    assert flagged == {
        PACKAGE: [],
        f"{PACKAGE}.core": [],
        f"{PACKAGE}.core.clean": [],
        f"{PACKAGE}.core.eager": ["1: rclpy.node"],
        f"{PACKAGE}.core.lazy": ["2: sensor_msgs.msg", "2: sensor_msgs.msg.Imu"],
        f"{PACKAGE}.core.via_ros": ["2: flow_anomaly_ros.ros", "2: flow_anomaly_ros.ros.camera_node"],
    }


@pytest.mark.slow
def test_ts_train_bag_runs_without_ros(tmp_path):
    """``ts train --bag`` (bag reading with rosbags, featurisation, fit, model save) with ROS 2 unimportable.

    Only the ROS 2 packages are refused here, as on a machine without ROS: the ``flow-anomaly`` parser imports
    every command group, the ``bag`` and ``up`` groups of ``flow_anomaly_ros.ros`` included (they import no rclpy
    until they run).
    """
    from flow_anomaly_ros.data.bags import BagWriter, make_qos
    from flow_anomaly_ros.data.timeseries_dataset import base_recording
    from flow_anomaly_ros.demo.recording import _Messages
    from flow_anomaly_ros.timeseries.events import KIND_IMU
    from flow_anomaly_ros.timeseries.signals import default_config

    config, _ = default_config()
    rec, _ = base_recording(config, seed=0, duration_s=30.0)
    bag = tmp_path / "drive"
    with BagWriter(bag, storage="mcap") as w:
        w.add_topic("/imu/data", "sensor_msgs/msg/Imu", [make_qos(depth=1000)])
        w.add_topic("/from_can_bus", "can_msgs/msg/Frame", [make_qos(depth=1000)])
        m = _Messages(w)
        for e in rec.events:
            t = float(e["stamp"])
            if e["kind"] == KIND_IMU:
                w.write_message("/imu/data", round(t * 1e9), m.imu(t, e["accel"], e["gyro"]))
            else:
                n = int(e["dlc"])
                frame = (t, int(e["can_id"]), e["data"][:n].tobytes(), n, bool(e["is_error"]), bool(e["is_extended"]))
                w.write_message("/from_can_bus", round(t * 1e9), m.can(frame))
    out = tmp_path / "model"
    args = ["ts", "train", "--bag", str(bag), "--detector", "iforest", "--out", str(out), "--threads", "1"]
    assert run_guarded([], cli_args=args, blocked=ROS2_PACKAGES) == {}
    assert (out / "manifest.json").is_file()
