"""Test-session isolation for real rclpy over real DDS.

Every pytest run gets its own ROS_DOMAIN_ID (unless the caller chose one, as `make test` does), localhost-only
discovery and a throwaway ROS_LOG_DIR, set before anything initialises rclpy. Subprocesses inherit them.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 80))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="flow_anomaly_ros_log_"))
os.environ.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture
def ros_node(request):
    """An rclpy node in its own context, with a single-threaded executor; torn down after the test."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    name = "test_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:50]
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    node.executor_for_test = executor
    try:
        yield node
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
