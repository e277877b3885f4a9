"""pip/setuptools build of the flow_anomaly_ros Python package.

Two ways in, one package: `colcon build` uses CMakeLists.txt (messages + ament_python_install_package), while
`pip install -e .` (run by `make setup`) serves the development venv and vehicles that install the Python side with
pip. Version ranges here are loose on purpose (Humble ships Python 3.10, Jazzy/Kilted 3.12); the exact versions used
for development and CI live in requirements-dev.txt and constraints.txt.
"""

from setuptools import find_packages, setup

NODES = {
    "timeseries_anomaly_node": "flow_anomaly_ros.ros.timeseries_node:main",
    "camera_anomaly_node": "flow_anomaly_ros.ros.camera_node:main",
    "synthesis_trainer_node": "flow_anomaly_ros.ros.synthesis_node:main",
}

setup(
    name="flow_anomaly_ros",
    version="0.1.0",
    description="Normalizing-flow anomaly detection for autonomous vehicles (ROS 2 nodes + ROS-free core)",
    packages=find_packages(include=["flow_anomaly_ros", "flow_anomaly_ros.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.21",
        "scipy>=1.8",
        "scikit-learn>=1.0",
        "torch>=2.5",  # torch.onnx.export(dynamo=...) (runtime/export.py); pip, not the distro python3-torch
        "torchvision>=0.20",  # the release paired with torch 2.5
        "nflows>=0.14",
        "onnx>=1.14",
        "onnxruntime>=1.16",
        "cantools>=39",
        "rosbags>=0.9.20",
        "safetensors>=0.4",
        "matplotlib>=3.5",
        "tqdm>=4.60",
        "pyyaml>=5.4",
        "pillow>=9.1",  # Image.Resampling
    ],
    extras_require={"data": ["gtsam>=4.2", "opendbc>=0.2"], "fast": ["zuko>=1.0"], "evaluation": ["ray>=2.40"]},
    entry_points={
        "console_scripts": ["flow-anomaly = flow_anomaly_ros.cli:main"]
        + [f"{name} = {target}" for name, target in NODES.items()],
    },
    package_data={"flow_anomaly_ros": ["py.typed"]},
)
