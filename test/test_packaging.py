"""package.xml (rosdep keys), setup.py (pip ranges), requirements-vehicle.txt and the README install commands agree.

The rosdep keys and what they install were read from ros/rosdistro ``rosdep/python.yaml`` (master, 2026-08): the
table below is that file's content for the keys this package uses, so a key that does not exist, or a pip key
whose package is not ranged in requirements-vehicle.txt, fails here instead of in ``rosdep install`` on a vehicle.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# rosdep key -> pip package (pip keys) or None (the distribution's package), from ros/rosdistro rosdep/python.yaml
ROSDEP_PYTHON_KEYS = {
    "python3-numpy": None,
    "python3-yaml": None,
    "python3-scipy": None,
    "python3-sklearn": None,
    "python3-matplotlib": None,
    "python3-tqdm": None,
    "python3-pil": None,
    "python3-pytest": None,
    "python3-torch": None,
    "python3-torchvision": None,
    "python3-torchvision-pip": "torchvision",
    "python3-onnxruntime-pip": "onnxruntime",
    "python3-onnxruntime-gpu-pip": "onnxruntime-gpu",
    "python3-cantools-pip": "cantools",
    "python3-rosbags-pip": "rosbags",
}
# distribution packages that meet setup.py's ranges on every supported release (Ubuntu 22.04 has the oldest)
DISTRO_SUFFICES = {"numpy": "python3-numpy", "scipy": "python3-scipy", "pyyaml": "python3-yaml",
                   "matplotlib": "python3-matplotlib"}  # fmt: skip


def _package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _python_keys() -> list[str]:
    return [e.text for e in _package_xml() if e.tag.endswith("depend") and e.text.startswith("python3-")]


def _setup_requirements() -> dict[str, Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "install_requires")
    return {(r := Requirement(ast.literal_eval(e))).name.lower(): r for e in call.value.elts}


def _vehicle_requirements() -> dict[str, Requirement]:
    lines = (REPO / "requirements-vehicle.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return {r.name.lower(): r for r in reqs}


def test_package_xml_uses_only_real_rosdep_keys_and_pip_torch():
    keys = _python_keys()
    unknown = [k for k in keys if k not in ROSDEP_PYTHON_KEYS]
    assert not unknown, f"not rosdep keys in ros/rosdistro rosdep/python.yaml: {unknown}"
    # the distribution's torch is 1.13 on Debian 12 (no torch.onnx.export dynamo=) and CPU-only: never declare it
    assert "python3-torch" not in keys and "python3-torchvision" not in keys
    assert {"python3-torchvision-pip", "python3-onnxruntime-pip", "python3-cantools-pip", "python3-rosbags-pip"} <= set(
        keys
    )
    assert "requirements-vehicle.txt" in (REPO / "package.xml").read_text()


def test_requirements_vehicle_has_every_pip_range_of_setup_py():
    setup, vehicle = _setup_requirements(), _vehicle_requirements()
    keys = set(_python_keys())
    for name, requirement in setup.items():
        if name in DISTRO_SUFFICES:
            assert DISTRO_SUFFICES[name] in keys, f"{name}: package.xml lacks {DISTRO_SUFFICES[name]}"
            assert name not in vehicle
        else:
            assert name in vehicle, f"setup.py requires {requirement}, requirements-vehicle.txt does not"
            assert vehicle[name].specifier == requirement.specifier, f"{vehicle[name]} vs setup.py {requirement}"
    assert set(vehicle) <= set(setup), f"requirements-vehicle.txt has more than setup.py: {set(vehicle) - set(setup)}"
    for key in keys:  # every pip key's package gets its minimum from requirements-vehicle.txt
        if ROSDEP_PYTHON_KEYS[key] is not None:
            assert ROSDEP_PYTHON_KEYS[key] in vehicle, key


def test_minimum_versions_cover_what_the_code_uses():
    setup = _setup_requirements()
    assert not setup["torch"].specifier.contains("2.4.1") and setup["torch"].specifier.contains("2.5.0")  # dynamo=
    assert not setup["pillow"].specifier.contains("9.0.1") and setup["pillow"].specifier.contains("9.1.0")
    assert "dynamo=False" in (REPO / "flow_anomaly_ros" / "runtime" / "export.py").read_text()
    assert "Image.Resampling" in (REPO / "flow_anomaly_ros" / "segmentation" / "augment.py").read_text()


def test_readme_vehicle_install_commands_are_the_checked_ones():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running on a vehicle", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert "cd ~/ros2_ws && PIP_BREAK_SYSTEM_PACKAGES=1 rosdep install --from-paths src --ignore-src -y" in commands
    pip = "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -r src/flow_anomaly_ros/requirements-vehicle.txt"
    assert pip in commands
    assert any(c.startswith("colcon build --packages-select flow_anomaly_ros") for c in commands)
    assert not any("pip install nflows" in c for c in commands)  # the old hand-written list


def test_the_tested_environment_satisfies_the_vehicle_ranges():
    """The versions this suite runs with lie inside the published ranges (a range that excludes them is untested)."""
    from importlib.metadata import version

    for name, requirement in _vehicle_requirements().items():
        installed = version(name)
        assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed} vs {requirement}"
