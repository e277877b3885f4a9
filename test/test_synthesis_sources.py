"""Synthesis frame sources on real bags written by the project's own bag writer, and pseudo-labels from a base model
that runs at its own ``input_size`` (labels must come back at the frame size)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flow_anomaly_ros.data.bags import BagWriter, make_qos

H, W = 64, 128


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def _write_image_bag(path: Path, frames: list[np.ndarray], compressed: list[np.ndarray] | None = None) -> Path:
    """A bag with a raw ``Image`` topic, optionally a PNG ``CompressedImage`` topic, and an IMU topic (not images)."""
    with BagWriter(path) as w:
        Time, Header = w.message_class("builtin_interfaces/msg/Time"), w.message_class("std_msgs/msg/Header")
        Img, Comp = w.message_class("sensor_msgs/msg/Image"), w.message_class("sensor_msgs/msg/CompressedImage")
        w.add_topic("/cam/image_raw", "sensor_msgs/msg/Image", [make_qos(True, depth=5)])
        w.add_topic("/imu/data", "sensor_msgs/msg/Imu", [make_qos(True)])
        if compressed is not None:
            w.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage", [make_qos(True, depth=5)])
        for i, f in enumerate(frames):
            stamp_ns = 1_000_000_000 + i * 100_000_000
            header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="cam")
            bgr = np.ascontiguousarray(f[:, :, ::-1])  # bgr8 exercises the channel order
            msg = Img(header=header, height=H, width=W, encoding="bgr8", is_bigendian=0, step=W * 3,
                      data=bgr.reshape(-1))  # fmt: skip
            w.write_message("/cam/image_raw", stamp_ns, msg)
        for i, f in enumerate(compressed or []):
            stamp_ns = 1_000_000_000 + i * 100_000_000
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="PNG")
            header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="cam")
            msg = Comp(header=header, format="png", data=np.frombuffer(buf.getvalue(), np.uint8))
            w.write_message("/cam/compressed", stamp_ns, msg)
    return path


def test_frames_from_bag_decodes_raw_and_compressed_topics_of_a_real_bag(tmp_path):
    from flow_anomaly_ros.synthesis.sources import frames_from_bag

    frames = _frames(4)
    bag = _write_image_bag(tmp_path / "cams", frames, compressed=frames[:2])
    got = list(frames_from_bag(bag, "/cam/image_raw"))
    assert [g[2] for g in got] == [None] * 4
    assert all(np.array_equal(g[1], f) for g, f in zip(got, frames))
    assert got[0][0] == "cam_image_raw_1000000000"
    every2 = list(frames_from_bag(bag, "/cam/image_raw", max_images=1, every_n=2))
    assert len(every2) == 1 and np.array_equal(every2[0][1], frames[0])
    png = list(frames_from_bag(bag, "/cam/compressed"))
    assert len(png) == 2 and np.array_equal(png[1][1], frames[1])
    with pytest.raises(ValueError, match=r"image topics \['/cam/compressed', '/cam/image_raw'\]; choose one"):
        next(frames_from_bag(bag))
    with pytest.raises(ValueError, match="'/imu/data' is not an image topic"):
        next(frames_from_bag(bag, "/imu/data"))


def test_only_image_topic_is_chosen_when_none_is_given(tmp_path):
    from flow_anomaly_ros.synthesis.sources import frames_from_bag

    bag = _write_image_bag(tmp_path / "cam", _frames(2))
    assert len(list(frames_from_bag(bag))) == 2


def test_maf_paste_with_bag_source_writes_a_data_set(tmp_path, capsys):
    from flow_anomaly_ros.cli import main

    bag = _write_image_bag(tmp_path / "cam", _frames(3))
    out = tmp_path / "pasted"
    rc = main(["maf", "paste", "--bag", str(bag), "--noise", "--out", str(out), "-q"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and summary["unlabeled_frames"] == 3
    assert len(list(out.rglob("*_leftImg8bit.png"))) == 3


def _base_model_with_input_size(path: Path, input_size: tuple[int, int]) -> Path:
    import torch

    from flow_anomaly_ros.segmentation import SegmentationSpec, build_model, save_segmentation_model

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large").eval()
    save_segmentation_model(path, model, SegmentationSpec(backbone="mobilenet_v3_large", input_size=input_size))
    return path


def test_bag_job_pseudo_labels_at_frame_size_with_a_base_model_that_has_input_size(tmp_path):
    from flow_anomaly_ros.synthesis.job import JobConfig, SynthesisJob

    base = _base_model_with_input_size(tmp_path / "base", (32, 64))  # the network runs at half the frame size
    bag = _write_image_bag(tmp_path / "cam", _frames(3))
    work = tmp_path / "job"
    cfg = JobConfig.from_dict(
        dict(work_dir=str(work), source="bag", bag_path=str(bag), base_model=str(base), num_frames=3,
             scene_height=H, scene_width=W, crop_height=H, crop_width=W, threads=1)
    )  # fmt: skip
    info = SynthesisJob(cfg)._stage_gather()
    assert info == {"frames": 3, "pseudo_labelled": 3}
    labels = sorted((work / "dataset" / "gtFine").rglob("*_labelTrainIds.png"))
    images = sorted((work / "dataset" / "leftImg8bit").rglob("*.png"))
    assert len(labels) == len(images) == 3
    for lp in labels:
        label = np.asarray(Image.open(lp))
        assert label.shape == (H, W) and label.max() < 19
    # the gathered data set loads: the Cityscapes reader checks label and image sizes agree
    from flow_anomaly_ros.data.cityscapes import CityscapesDataset

    data = CityscapesDataset(work / "dataset", split="train")
    assert len(data) == 3
    for i in range(3):
        image, label = data[i]
        assert image.shape[:2] == label.shape == (H, W)
