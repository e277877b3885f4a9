"""Road-anomaly benchmarks in their published layouts: images plus per-pixel out-of-distribution masks.

Each item is ``(image uint8 RGB HxWx3, ood uint8 HxW)`` with ood 0 = inlier, 1 = anomaly, 255 = void (ignored by
:mod:`flow_anomaly_ros.evaluation.pixel_metrics`). Layouts:

- ``smiyc`` (SegmentMeIfYouCan, AnomalyTrack / ObstacleTrack): ``images/<name>.{jpg,png,webp}`` and
  ``labels_masks/<name>_labels_semantic.png`` with 0 / 1 / 255.
- ``road_anomaly`` (Lis et al., ICCV 2019): ``frames/<name>.jpg`` and ``frames/<name>.labels/labels_semantic.png``
  where 2 marks the anomaly and 0 the rest; other values become void.
- ``fishyscapes`` (Lost & Found / Static as distributed with PEBAL-style loaders): ``original/<name>.png`` and
  ``labels/<name>.png`` with 0 / 1 / 255.

Only the validation parts of these benchmarks have public labels; none can be downloaded on these machines, so the
tests (and the demo) write procedural street scenes in exactly these layouts with :func:`write_benchmark_layout`.

Example::

    ds = AnomalyBenchmark("/data/RoadAnomaly_jpg")  # layout detected from the folders
    image, ood = ds[0]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from flow_anomaly_ros.data.cityscapes import read_label, read_rgb

LAYOUTS = ("smiyc", "road_anomaly", "fishyscapes")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
VOID = 255


def detect_layout(root: Path) -> str:
    if (root / "images").is_dir() and (root / "labels_masks").is_dir():
        return "smiyc"
    if (root / "frames").is_dir():
        return "road_anomaly"
    if (root / "original").is_dir() and (root / "labels").is_dir():
        return "fishyscapes"
    raise FileNotFoundError(
        f"{root} is not a known anomaly-benchmark layout: expected images/ + labels_masks/ (SMIYC), frames/ "
        "(Road Anomaly) or original/ + labels/ (Fishyscapes)"
    )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class AnomalyBenchmark:
    """(image, ood mask) pairs of one benchmark folder; ``layout=None`` detects it."""

    def __init__(self, root: str | os.PathLike[str], layout: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"anomaly benchmark folder not found: {self.root}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout or detect_layout(self.root)
        self.items: list[tuple[Path, Path]] = []
        if self.layout == "smiyc":
            for image in _images(self.root / "images"):
                self.items.append((image, self.root / "labels_masks" / f"{image.stem}_labels_semantic.png"))
        elif self.layout == "road_anomaly":
            for image in _images(self.root / "frames"):
                self.items.append((image, self.root / "frames" / f"{image.stem}.labels" / "labels_semantic.png"))
        else:
            for image in _images(self.root / "original"):
                self.items.append((image, self.root / "labels" / f"{image.stem}.png"))
        if not self.items:
            raise FileNotFoundError(f"no images found in {self.root} ({self.layout} layout)")
        missing = [str(lbl) for _, lbl in self.items if not lbl.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} label files missing in {self.root}, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.items[index]
        image = read_rgb(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise ValueError(f"{label_path} is {raw.shape}, image {image_path} is {image.shape[:2]}")
        ood = np.full(raw.shape, VOID, np.uint8)
        if self.layout == "road_anomaly":
            ood[raw == 0] = 0
            ood[raw == 2] = 1
        else:
            ood[raw == 0] = 0
            ood[raw == 1] = 1
        return image, ood


def write_benchmark_layout(
    root: str | os.PathLike[str],
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    layout: str,
    prefix: str = "validation",
) -> list[Path]:
    """Write (image, ood 0/1/255) pairs in ``layout`` exactly as the benchmark ships them; returns image paths."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    paths = []
    for i, (image, ood) in enumerate(samples):
        name = f"{prefix}{i:04d}"
        if layout == "smiyc":
            img_path, lbl_path, lbl = (
                root / "images" / f"{name}.jpg",
                root / "labels_masks" / f"{name}_labels_semantic.png",
                ood,
            )
        elif layout == "road_anomaly":
            raw = np.where(ood == 1, 2, 0).astype(np.uint8)
            raw[ood == VOID] = 1  # any other value is void in Road Anomaly
            img_path, lbl_path, lbl = (
                root / "frames" / f"{name}.jpg",
                root / "frames" / f"{name}.labels" / "labels_semantic.png",
                raw,
            )
        else:
            img_path, lbl_path, lbl = root / "original" / f"{name}.png", root / "labels" / f"{name}.png", ood
        img_path.parent.mkdir(parents=True, exist_ok=True)
        lbl_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(img_path, **({"quality": 95} if img_path.suffix == ".jpg" else {}))
        Image.fromarray(lbl.astype(np.uint8)).save(lbl_path)
        paths.append(img_path)
    return paths
