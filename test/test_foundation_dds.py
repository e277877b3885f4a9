"""The package's own messages cross a process boundary over real Fast DDS with every field intact."""

from __future__ import annotations

import pytest
from rosutil import spin_until, start_python, stop_process

pytestmark = pytest.mark.ros


def test_anomaly_messages_travel_between_processes(ros_node):
    from flow_anomaly_ros.msg import AnomalyScore, ImageAnomaly

    scores: list[AnomalyScore] = []
    images: list[ImageAnomaly] = []
    ros_node.create_subscription(AnomalyScore, "test_score", scores.append, 10)
    ros_node.create_subscription(ImageAnomaly, "test_image_anomaly", images.append, 10)
    proc = start_python(["test/dds_publisher.py"])
    try:
        ok = spin_until(ros_node, lambda: len(scores) >= 3 and len(images) >= 3, timeout=30)
    finally:
        output = stop_process(proc)
    assert ok, f"no messages received over DDS; publisher output:\n{output}"
    s = scores[-1]
    assert s.source == "realnvp@test" and s.score == pytest.approx(12.5) and s.is_anomaly
    assert list(s.feature_names) == ["imu.accel_x", "can.speed"]
    assert list(s.feature_contributions) == pytest.approx([0.25, 0.75])
    assert s.status == AnomalyScore.STALE_INPUT and s.header.frame_id == "base_link"
    assert s.header.stamp.sec > 1000
    i = images[-1]
    assert i.backend == "onnxruntime-cpu" and i.is_anomaly
    assert (i.regions[0].x_offset, i.regions[0].y_offset, i.regions[0].width, i.regions[0].height) == (10, 20, 30, 40)
    assert list(i.region_scores) == pytest.approx([0.9])


def test_status_constants_are_distinct():
    from flow_anomaly_ros.msg import AnomalyScore

    names = ["OK", "WARMING_UP", "STALE_INPUT", "INVALID_INPUT", "MODEL_ERROR"]
    values = [getattr(AnomalyScore, n) for n in names]
    assert values == [0, 1, 2, 3, 4]
