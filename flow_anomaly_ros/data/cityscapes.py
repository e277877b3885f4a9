"""Cityscapes in its official layout: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/...``.

Labels are read from ``*_gtFine_labelIds.png`` and mapped to the 19 trainIds with the official table (everything
else → 255); when only ``*_gtFine_labelTrainIds.png`` (made by cityscapesscripts' ``createTrainIdLabelImgs``)
exists, it is used as is. :func:`write_cityscapes_layout` writes images and labelId files in exactly this layout
(used by the tests, and to run the real loaders on procedural street scenes).

Example::

    ds = CityscapesDataset("/data/cityscapes", split="val")
    image, label = ds[0]  # uint8 HxWx3 RGB, uint8 HxW trainIds
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from flow_anomaly_ros.segmentation.classes import label_id_to_train_id_lut, train_id_to_label_id_lut

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
SPLITS = ("train", "val", "test", "train_extra")


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as uint8 RGB ``HxWx3``; clear error for unreadable files."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read label image {path}: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"label image {path} must be single-channel, got shape {arr.shape}")
    return arr


class CityscapesDataset:
    """Pairs of (RGB image, trainId label) of one split; items sorted by file name."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", cities: Iterable[str] | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split = Path(root), split
        image_dir = self.root / "leftImg8bit" / split
        label_dir = self.root / "gtFine" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"Cityscapes images not found: {image_dir} (expected leftImg8bit/{split}/<city>/)")
        if not label_dir.is_dir():
            raise FileNotFoundError(f"Cityscapes labels not found: {label_dir} (expected gtFine/{split}/<city>/)")
        wanted = set(cities) if cities is not None else None
        self.items: list[tuple[Path, Path, bool]] = []
        for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
            city = image.parent.name
            if wanted is not None and city not in wanted:
                continue
            stem = image.name[: -len(IMAGE_SUFFIX)]
            label_ids = label_dir / city / (stem + LABEL_IDS_SUFFIX)
            train_ids = label_dir / city / (stem + TRAIN_IDS_SUFFIX)
            if label_ids.is_file():
                self.items.append((image, label_ids, False))
            elif train_ids.is_file():
                self.items.append((image, train_ids, True))
            else:
                raise FileNotFoundError(f"no gtFine label for {image} (looked for {label_ids.name})")
        if not self.items:
            raise FileNotFoundError(f"no *{IMAGE_SUFFIX} images in {image_dir}/<city>/")
        self._lut = label_id_to_train_id_lut()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path, is_train_ids = self.items[index]
        image = read_rgb(image_path)
        label = read_label(label_path)
        if label.shape != image.shape[:2]:
            raise ValueError(f"{label_path} is {label.shape}, image {image_path} is {image.shape[:2]}")
        if not is_train_ids:
            label = self._lut[label.astype(np.uint8)]
        return image, label.astype(np.uint8)


def write_cityscapes_layout(
    root: str | os.PathLike[str],
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    split: str = "train",
    city: str = "synthcity",
) -> list[Path]:
    """Write (image, trainId label) pairs as Cityscapes files (labelIds); returns the image paths."""
    root = Path(root)
    lut = train_id_to_label_id_lut()
    image_dir = root / "leftImg8bit" / split / city
    label_dir = root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(samples):
        stem = f"{city}_{i:06d}_000019"
        Image.fromarray(image).save(image_dir / (stem + IMAGE_SUFFIX))
        Image.fromarray(lut[label]).save(label_dir / (stem + LABEL_IDS_SUFFIX))
        paths.append(image_dir / (stem + IMAGE_SUFFIX))
    return paths
