"""Cityscapes class definitions used everywhere in the segmentation path (trainIds, colours, labelId mapping).

The 19 evaluation classes of Cityscapes (Cordts et al., CVPR 2016) keep their official *trainIds* 0..18; the anomaly
class of the paper (Hu & Kathula 2024, §4.1) is appended as index 19, and 255 is the ignore label. The labelId →
trainId table is the official one from ``cityscapesscripts/helpers/labels.py``.
"""

from __future__ import annotations

import numpy as np

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
NUM_INLIER_CLASSES = len(CITYSCAPES_CLASSES)  # 19
ANOMALY_ID = NUM_INLIER_CLASSES  # 19: the extra class of the paper
ANOMALY_NAME = "anomaly"
IGNORE_ID = 255

# Official Cityscapes palette (trainId order) plus a bright magenta for the anomaly class.
CITYSCAPES_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
ANOMALY_COLOR = (255, 0, 255)

# labelId -> trainId (official table; every labelId not listed, and the license plate (-1), maps to ignore).
_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10}
_LABEL_TO_TRAIN.update({24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18})


def label_id_to_train_id_lut() -> np.ndarray:
    """A 256-entry uint8 lookup table: ``lut[labelId] = trainId`` (255 for ignored labels)."""
    lut = np.full(256, IGNORE_ID, np.uint8)
    for label_id, train_id in _LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def train_id_to_label_id_lut() -> np.ndarray:
    """Inverse table for writing Cityscapes-layout label files: ``lut[trainId] = labelId`` (ignore → 0)."""
    lut = np.zeros(256, np.uint8)
    for label_id, train_id in _LABEL_TO_TRAIN.items():
        lut[train_id] = label_id
    return lut


def class_names(num_inlier_classes: int = NUM_INLIER_CLASSES) -> list[str]:
    """Names of the model's output channels: the inlier classes then ``anomaly``."""
    if num_inlier_classes == NUM_INLIER_CLASSES:
        names = list(CITYSCAPES_CLASSES)
    else:
        names = [f"class_{i}" for i in range(num_inlier_classes)]
    return [*names, ANOMALY_NAME]


def palette(num_inlier_classes: int = NUM_INLIER_CLASSES) -> np.ndarray:
    """(256, 3) uint8 colour table indexed by class id (anomaly magenta, ignore black)."""
    table = np.zeros((256, 3), np.uint8)
    rng = np.random.default_rng(0)
    for i in range(num_inlier_classes):
        table[i] = CITYSCAPES_COLORS[i] if i < len(CITYSCAPES_COLORS) else rng.integers(0, 256, 3)
    table[num_inlier_classes] = ANOMALY_COLOR
    return table


def colorize(label: np.ndarray, num_inlier_classes: int = NUM_INLIER_CLASSES) -> np.ndarray:
    """Map an integer label image (HxW) to an RGB uint8 image with the Cityscapes palette."""
    return palette(num_inlier_classes)[np.asarray(label, dtype=np.uint8)]
