"""Offline and live evaluation agree: the camera node, run as its own process and fed over DDS by the bag player,
publishes exactly the masks and score maps its core computes offline on the same bag (real ONNX Runtime model,
real Fast DDS, real bag files)."""

from __future__ import annotations

import numpy as np
import pytest

from flow_anomaly_ros.data.bags import BagWriter, make_qos
from flow_anomaly_ros.demo import cores
from flow_anomaly_ros.demo import evaluate as E
from flow_anomaly_ros.demo.config import CAMERA_TOPIC, DemoConfig
from flow_anomaly_ros.demo.recording import _Messages, camera_frames

T0 = 1_317_340_800.0


@pytest.fixture(scope="module")
def tiny_seg_model(tmp_path_factory):
    """An untrained mobilenet DeepLabV3 + anomaly class, exported to ONNX (what the node loads)."""
    import torch

    from flow_anomaly_ros.runtime.export import export_onnx
    from flow_anomaly_ros.segmentation.model import build_model, save_segmentation_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg") / "model"
    save_segmentation_model(path, build_model("mobilenet_v3_large"))
    export_onnx(path, sample_size=(64, 128))
    return path


@pytest.fixture(scope="module")
def camera_bag(tmp_path_factory):
    cfg = DemoConfig.quick()
    frames = camera_frames(cfg, T0, 4.0)
    path = tmp_path_factory.mktemp("bag") / "camera"
    with BagWriter(path) as w:
        w.add_topic(CAMERA_TOPIC, "sensor_msgs/msg/Image", [make_qos(True, depth=5)])
        m = _Messages(w)
        for f in frames:
            w.write_message(CAMERA_TOPIC, round(f.stamp_s * 1e9), m.image(f.stamp_s, f.image))
    return path, frames


def test_camera_node_live_over_dds_equals_its_core_offline(tmp_path, tiny_seg_model, camera_bag):
    from flow_anomaly_ros.demo.live import replay_and_record, start_nodes

    bag, frames = camera_bag
    # threshold at the 90th percentile of the untrained model's scores, so that masks are not trivially empty
    probe = cores.frame_processor(cores.DemoModels(ts_models={}, seg_model=tiny_seg_model, threshold=0.5))
    threshold = float(np.percentile(probe.score_image(probe.process(frames[0].image)), 90))
    models = cores.DemoModels(ts_models={}, seg_model=tiny_seg_model, threshold=threshold, min_region_area=4)
    topics = {"camera": CAMERA_TOPIC}
    nodes = start_nodes(E.node_launches(models, {"imu": "", "can": "", **topics}), tmp_path / "logs")
    try:
        run = replay_and_record(
            bag,
            tmp_path / "outputs",
            E.CAMERA_OUTPUTS,
            rate=1.0,
            wait_topics=[CAMERA_TOPIC],
            wait_timeout_s=120,
            outputs_ready=E.outputs_complete(len(frames), 0),
        )
        alive = nodes.alive()
    finally:
        nodes.stop()
    assert alive == {"camera_anomaly_node": True}, nodes.logs()
    assert run.published == {CAMERA_TOPIC: len(frames)}
    live = E.outputs_to_evaluation(bag, tmp_path / "outputs", models, run.publish_wall_ns, topics)
    assert len(live.camera) == len(frames), f"node dropped frames: {run.recorded}\n{nodes.logs()}"

    processor = cores.frame_processor(models)
    by_stamp = {round(f.stamp_s * 1e9): f for f in frames}
    flagged = 0
    for c in live.camera:
        frame = processor.process(by_stamp[c.stamp_ns].image)
        np.testing.assert_array_equal(c.mask, frame.mask != 0)
        np.testing.assert_array_equal(c.scores, processor.score_image(frame))
        assert c.is_anomaly == bool(frame.regions)
        flagged += int(c.mask.sum())
    assert flagged > 0, "threshold too high: the comparison would only see empty masks"
    rows = {r["stage"]: r for r in live.latency}
    assert rows["camera node: receipt -> summary published"]["count"] == len(frames)
    assert rows["camera end to end: image published -> summary received"]["p50_ms"] > 0
