"""`colcon build` of this package in a fresh workspace succeeds, and the installed package works.

This is the vehicle's install path (ament_cmake + rosidl + ament_python_install_package). The workspace is
built against the venv's ROS 2 Kilted wheels, exactly as a ROS 2 underlay would be used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

pytestmark = pytest.mark.slow


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: cannot tell source files from build outputs")
    return [f for f in out.stdout.splitlines() if (REPO / f).is_file()]


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    if shutil.which("colcon", path=str(VENV / "bin")) is None:
        pytest.skip("colcon is not installed in this environment (make setup installs it)")
    ws = tmp_path_factory.mktemp("ws")
    src = ws / "src" / "flow_anomaly_ros"
    for rel in _tracked_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV / 'bin'}:{env.get('PATH', '')}",
        CMAKE_PREFIX_PATH=str(VENV),
        AMENT_PREFIX_PATH=str(VENV),
    )
    result = subprocess.run(
        [str(VENV / "bin" / "colcon"), "build", "--base-paths", "src", "--event-handlers", "console_cohesion+"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return ws / "install" / "flow_anomaly_ros"


def _run_installed(prefix: Path, code: str) -> subprocess.CompletedProcess:
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(site),
        LD_LIBRARY_PATH=f"{prefix / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}",
        AMENT_PREFIX_PATH=f"{prefix}:{VENV}",
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=prefix, capture_output=True, text=True, timeout=120
    )


def test_colcon_build_installs_messages_that_import(colcon_install: Path):
    code = (
        "import flow_anomaly_ros.msg as m\n"
        "from rclpy.serialization import serialize_message, deserialize_message\n"
        "s = m.AnomalyScore(score=2.5, feature_names=['a'])\n"
        "r = deserialize_message(serialize_message(s), m.AnomalyScore)\n"
        "assert r.score == 2.5 and list(r.feature_names) == ['a']\n"
        "m.ImageAnomaly(); m.TrainingStatus()\n"
        "print(m.__file__)\n"
    )
    result = _run_installed(colcon_install, code)
    assert result.returncode == 0, result.stderr
    assert str(colcon_install) in result.stdout, "messages were imported from the dev venv, not the colcon install"


def test_colcon_install_layout_has_nodes_launch_and_config(colcon_install: Path):
    for exe in ("timeseries_anomaly_node", "camera_anomaly_node", "synthesis_trainer_node", "flow-anomaly"):
        path = colcon_install / "lib" / "flow_anomaly_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), f"missing executable {path}"
    share = colcon_install / "share" / "flow_anomaly_ros"
    assert (share / "package.xml").is_file()
    for sub in ("launch", "config", "models"):
        assert (share / sub).is_dir(), f"missing share/{sub}"
    index = colcon_install / "share" / "ament_index" / "resource_index" / "packages" / "flow_anomaly_ros"
    assert index.is_file(), "package not registered in the ament index (ros2 run would not find it)"


def test_colcon_installed_python_package_is_the_hand_written_one(colcon_install: Path):
    code = "import flow_anomaly_ros.model_store as s; print(s.__file__)"
    result = _run_installed(colcon_install, code)
    assert result.returncode == 0, result.stderr
    assert str(colcon_install) in result.stdout.splitlines()[0]


def test_ts_train_from_the_installed_tree_finds_config_through_the_ament_index(colcon_install: Path, tmp_path):
    """``ts train`` without ``--config`` from the install (not the source tree): the default training config is the
    installed share's ``config/timeseries_model.yaml``, found through the ament index (flow_anomaly_ros.share)."""
    out = tmp_path / "model"
    code = (
        "import sys; from flow_anomaly_ros.timeseries.signals import DEFAULT_CONFIG_PATH as p; print(p); "
        "from flow_anomaly_ros.cli import main; "
        f"sys.exit(main(['ts', 'train', '--detector', 'iforest', '--quick', '--threads', '1', '--out', '{out}']))"
    )
    result = _run_installed(colcon_install, code)
    assert result.returncode == 0, result.stderr[-3000:]
    config = Path(result.stdout.splitlines()[0])
    assert config == colcon_install / "share" / "flow_anomaly_ros" / "config" / "timeseries_model.yaml"
    assert (out / "manifest.json").is_file() and "wrote" in result.stdout


def test_colcon_test_runs_the_pytest_suite(colcon_install: Path):
    """CMakeLists.txt's BUILD_TESTING block (ament_add_pytest_test): `colcon test` runs test/ with pytest; a subset
    is chosen through PYTEST_ADDOPTS so that this check stays short (the whole suite runs the same way)."""
    import xml.etree.ElementTree as ET

    ws = colcon_install.parents[1]
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV / 'bin'}:{env.get('PATH', '')}",
        CMAKE_PREFIX_PATH=str(VENV),
        AMENT_PREFIX_PATH=f"{colcon_install}:{VENV}",
        PYTEST_ADDOPTS="-k 'test_packaging or test_launch_parameters'",
    )
    result = subprocess.run(
        [str(VENV / "bin" / "colcon"), "test", "--base-paths", "src", "--packages-select", "flow_anomaly_ros"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"colcon test failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    xunit = (
        ws / "build" / "flow_anomaly_ros" / "test_results" / "flow_anomaly_ros" / "flow_anomaly_ros_pytest.xunit.xml"
    )
    assert xunit.is_file(), f"no pytest results from colcon test:\n{result.stdout[-3000:]}"
    suite = ET.parse(xunit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) >= 5 and int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    summary = subprocess.run(
        [str(VENV / "bin" / "colcon"), "test-result", "--test-result-base", "build"], cwd=ws, env=env, text=True,
        capture_output=True,
    )  # fmt: skip
    assert summary.returncode == 0, summary.stdout
