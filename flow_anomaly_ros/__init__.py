"""flow_anomaly_ros: normalizing-flow anomaly detection for autonomous vehicles.

The package is a ROS-free core (``flows``, ``timeseries``, ``segmentation``, ``synthesis``, ``runtime``, ``data``,
``evaluation``) plus thin ROS 2 adapters in ``ros``. Importing it never imports rclpy or torch.

Generated message modules (``flow_anomaly_ros.msg``) are built by rosidl. In a colcon install they sit in the same
directory as this file; in the development venv (``make setup``) they are installed into the venv's site-packages
while this package is installed in editable mode. ``extend_path`` joins both locations into one package, so
``from flow_anomaly_ros.msg import AnomalyScore`` works in either layout without sourcing anything.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
