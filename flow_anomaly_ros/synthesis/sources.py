"""Where inlier frames come from for the offline synthesis job: an image directory, a rosbag, or procedural scenes.

All three yield ``(name, uint8 RGB HxWx3, label or None)``; labels exist for procedural scenes (exact trainIds) and
for image directories laid out like Cityscapes (``*_leftImg8bit.png`` next to ``*_gtFine_labelTrainIds.png`` in the
``gtFine`` tree). Bags are read with :mod:`flow_anomaly_ros.data.bags` (``rosbags``, no rclpy) and decoded with
:mod:`flow_anomaly_ros.data.image_messages` (``sensor_msgs/Image`` and ``CompressedImage``), so the node, the CLI and
the tests share one path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from flow_anomaly_ros.synthesis.patches import iter_image_dir

Frame = tuple[str, np.ndarray, "np.ndarray | None"]
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def cityscapes_label_for(image_path: Path) -> Path | None:
    """The trainId label file of a Cityscapes ``leftImg8bit`` image, if it exists."""
    name = image_path.name
    if not name.endswith("_leftImg8bit.png"):
        return None
    parts = list(image_path.parts)
    if "leftImg8bit" not in parts:
        return None
    idx = len(parts) - 1 - parts[::-1].index("leftImg8bit")
    parts[idx] = "gtFine"
    parts[-1] = name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    path = Path(*parts)
    return path if path.is_file() else None


def frames_from_dir(directory: str | Path, max_images: int | None = None) -> Iterator[Frame]:
    """Images of a directory (recursively, sorted); Cityscapes trainId labels are attached where found."""
    root = Path(directory)
    count = 0
    for path, image in iter_image_dir(root):
        if "gtFine" in path.relative_to(root).parts:
            continue  # label images of a Cityscapes tree are not frames
        if max_images is not None and count >= max_images:
            return
        count += 1
        label = None
        label_path = cityscapes_label_for(path)
        if label_path is not None:
            with Image.open(label_path) as lb:
                label = np.asarray(lb)
            if label.shape != image.shape[:2]:
                raise ValueError(f"label {label_path} is {label.shape}, image {path} is {image.shape[:2]}")
        yield str(path.relative_to(root).with_suffix("")).replace("/", "__"), image, label


def frames_from_bag(
    bag: str | Path, topic: str | None = None, max_images: int | None = None, every_n: int = 1
) -> Iterator[Frame]:
    """Decoded images of one image topic of a rosbag2 (the only image topic when ``topic`` is None)."""
    from flow_anomaly_ros.data.bags import BagReader
    from flow_anomaly_ros.data.image_messages import compressed_to_rgb, image_to_rgb

    if every_n < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    with BagReader(bag) as reader:
        topics = {t: ty for t, ty in reader.topics().items() if ty in IMAGE_TYPES}
        if topic is None:
            if len(topics) != 1:
                raise ValueError(f"bag {bag} has image topics {sorted(topics)}; choose one with a topic name")
            topic = next(iter(topics))
        if topic not in topics:
            raise ValueError(f"topic {topic!r} is not an image topic of bag {bag}; image topics: {sorted(topics)}")
        count = 0
        for i, raw in enumerate(reader.messages([topic])):
            if i % every_n:
                continue
            if max_images is not None and count >= max_images:
                return
            msg = reader.decode(raw)
            rgb = compressed_to_rgb(msg) if raw.msgtype.endswith("CompressedImage") else image_to_rgb(msg)
            count += 1
            yield f"{topic.strip('/').replace('/', '_')}_{raw.stamp_ns}", np.ascontiguousarray(rgb), None


def frames_from_scenes(count: int, height: int, width: int, seed: int = 0) -> Iterator[Frame]:
    """Anomaly-free procedural street scenes with exact labels (:mod:`flow_anomaly_ros.data.street_scenes`)."""
    from flow_anomaly_ros.data.street_scenes import StreetSceneDataset

    data = StreetSceneDataset(count, height, width, seed=seed, anomaly_fraction=0.0)
    for i in range(count):
        scene = data[i]
        yield f"scene_{i:06d}", scene.image, scene.label
