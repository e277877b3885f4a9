"""The camera node's per-frame wiring without ROS: same decisions as the backend, one resize, regions, mailbox."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from camera_testutil import SCENE_SIZE, camera_model_dir, scene_frames

from flow_anomaly_ros.ros.camera_pipeline import (
    FrameMailbox,
    FrameProcessor,
    chunked_argmax,
    chunked_score_map,
)
from flow_anomaly_ros.segmentation.scores import score_map
from flow_anomaly_ros.segmentation.spec import SCORE_METHODS


@pytest.fixture(scope="module")
def backend():
    from flow_anomaly_ros.runtime import load_backend

    return load_backend("onnxruntime", camera_model_dir())


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_chunked_scores_and_classes_equal_one_call(method):
    logits = np.random.default_rng(0).standard_normal((1, 20, 37, 23)).astype(np.float32)
    chunked = chunked_score_map(logits, method, chunk_pixels=100)
    np.testing.assert_allclose(chunked, score_map(logits, method)[0], rtol=1e-6, atol=1e-7)  # float rounding only
    np.testing.assert_array_equal(chunked_argmax(logits, chunk_pixels=50), logits[0].argmax(axis=0))


def test_mask_is_the_backends_decision_at_the_model_resolution(backend):
    threshold = backend.spec.threshold_for("anomaly_prob")
    processor = FrameProcessor(backend, "anomaly_prob", threshold)
    for scene in scene_frames(2, seed=5):
        frame = processor.process(scene.image)
        expected = backend.predict(scene.image, "anomaly_prob", threshold)
        assert frame.mask.shape == SCENE_SIZE and frame.mask.dtype == np.uint8
        np.testing.assert_array_equal(frame.mask == 255, expected.anomaly_mask[0])
        np.testing.assert_allclose(processor.score_image(frame), expected.scores[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(processor.semantic_image(frame), expected.classes[0])
        assert frame.inference_s > 0 and frame.scoring_s > 0


def test_smaller_network_input_is_resized_back_once(backend):
    from flow_anomaly_ros.runtime import load_backend

    small = load_backend("onnxruntime", camera_model_dir())
    small.spec.input_size = (SCENE_SIZE[0] // 2, SCENE_SIZE[1] // 2)
    threshold = small.spec.threshold_for("anomaly_prob")
    processor = FrameProcessor(small, "anomaly_prob", threshold, min_region_area=0)
    scene = scene_frames(1, seed=8)[0]
    frame = processor.process(scene.image)
    assert frame.mask.shape == SCENE_SIZE and frame.mask_lo.shape == small.spec.input_size
    np.testing.assert_array_equal(frame.mask[::2, ::2] == 255, frame.mask_lo)  # nearest neighbour, factor 2
    reference = small.predict(scene.image, "anomaly_prob", threshold).anomaly_mask[0]
    assert (reference == (frame.mask == 255)).mean() > 0.97  # differs only along region borders
    for region in frame.regions:  # boxes scaled to image pixels and covering the mask
        box = frame.mask[region.y : region.y + region.height, region.x : region.x + region.width]
        assert box.any() and region.area % 4 == 0  # low-resolution pixels x the 2x2 scale
        assert region.x % 2 == 0 and region.y % 2 == 0 and region.width % 2 == 0 and region.height % 2 == 0


def test_regions_are_connected_components_filtered_by_area():
    class FixedScores:
        name = "fixed"

        def infer(self, rgb):
            logits = np.zeros((1, 20, 8, 8), np.float32)
            logits[0, 19, 1:3, 1:3] = 10.0  # a 2x2 blob (4 px at the network resolution)
            logits[0, 19, 6, 6] = 10.0  # a single pixel
            logits[0, 19, 5, 0:2] = 10.0  # 2 px
            return logits

    processor = FrameProcessor(FixedScores(), "anomaly_prob", 0.5, min_region_area=2 * 16)
    image = np.zeros((32, 32, 3), np.uint8)
    frame = processor.process(image)
    assert frame.mask.shape == (32, 32)
    assert [(r.x, r.y, r.width, r.height, r.area) for r in frame.regions] == [(4, 4, 8, 8, 64), (0, 20, 8, 4, 32)]
    assert all(r.max_score > 0.99 for r in frame.regions)
    overlay = processor.overlay(image, frame)
    tinted = frame.mask == 255
    assert (overlay[~tinted] == 0).all()
    np.testing.assert_array_equal(overlay[tinted][0], (np.array([255, 0, 255]) * 0.6).astype(np.uint8))


def test_mailbox_with_slots_keeps_frames_in_order_and_drops_the_oldest_beyond_them():
    box = FrameMailbox(3)
    assert [box.put(i) for i in range(5)] == [False, False, False, True, True]
    assert [box.take(timeout=0.01) for _ in range(4)] == [2, 3, 4, None]
    assert (box.dropped, box.accepted) == (2, 5)
    with pytest.raises(ValueError, match="capacity"):
        FrameMailbox(0)


def test_mailbox_keeps_only_the_newest_and_counts_the_dropped():
    box = FrameMailbox()
    assert box.put(1) is False
    assert box.put(2) is True and box.put(3) is True
    assert box.take(timeout=0.01) == 3
    assert (box.dropped, box.accepted) == (2, 3)
    t0 = time.monotonic()
    assert box.take(timeout=0.05) is None and time.monotonic() - t0 >= 0.04
    got = []
    waiter = threading.Thread(target=lambda: got.append(box.take(timeout=10.0)))
    waiter.start()
    time.sleep(0.05)
    box.close()  # wakes the waiting worker at once
    waiter.join(timeout=2.0)
    assert not waiter.is_alive() and got == [None]


def test_engine_cache_dir_mirrors_the_model_with_symlinks(tmp_path):
    from flow_anomaly_ros.ros.camera_node import mirror_model_into
    from flow_anomaly_ros.runtime import load_backend

    model = camera_model_dir()
    assert mirror_model_into(str(model), "") == str(model)
    assert mirror_model_into(str(tmp_path / "missing"), str(tmp_path / "cache")) == str(tmp_path / "missing")
    mirrored = mirror_model_into(str(model), str(tmp_path / "cache"))
    assert mirrored == str(tmp_path / "cache" / model.name)
    assert sorted(p.name for p in (tmp_path / "cache" / model.name).iterdir()) == sorted(
        p.name for p in model.iterdir()
    )
    assert mirror_model_into(str(model), str(tmp_path / "cache")) == mirrored  # idempotent
    onnx = mirror_model_into(str(model / "model.onnx"), str(tmp_path / "cache2"))
    assert onnx == str(tmp_path / "cache2" / "model" / "model.onnx")
    backend = load_backend("onnxruntime", mirrored)
    assert backend.spec.thresholds == load_backend("onnxruntime", model).spec.thresholds
