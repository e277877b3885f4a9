"""Write images with pasted anomalies as a Cityscapes-layout data set plus a JSON manifest, atomically and resumably.

Layout (what Cityscapes tools and most segmentation code read)::

    ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png      # trainIds, 19 = anomaly, 255 = ignore
    ROOT/gtFine/<split>/<city>/<name>_gtFine_anomalyMask.png        # 255 on pasted pixels
    ROOT/manifest.json                                              # one entry per image + generation settings

Every file goes through :func:`flow_anomaly_ros.model_store.atomic_write_bytes` (temp file + rename), and the manifest
is rewritten after each image, so a killed writer leaves a valid data set and a restart skips what is done.

Example::

    writer = CityscapesWriter("out/synthetic", split="train", settings={"seed": 0})
    writer.write("scene_000001", image, label, anomaly_mask, extra={"boxes": [...]})
    writer.done()
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flow_anomaly_ros.model_store import atomic_write_bytes, atomic_write_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "flow_anomaly_ros/cityscapes-synthetic/1"


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 HxW (L) or HxWx3 (RGB) array as PNG."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWx3 array, got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array, "L" if array.ndim == 2 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


class CityscapesWriter:
    """Writes image/label pairs in the Cityscapes layout and keeps ``manifest.json`` up to date."""

    def __init__(self, root: str | Path, split: str = "train", city: str = "synthetic", settings: dict | None = None):
        for name, value in (("split", split), ("city", city)):
            if not value or "/" in value or value.startswith("."):
                raise ValueError(f"{name} must be a plain directory name, got {value!r}")
        self.root, self.split, self.city = Path(root), split, city
        self.manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "split": split,
            "city": city,
            "settings": settings or {},
            "complete": False,
            "entries": [],
        }
        path = self.root / MANIFEST
        if path.is_file():
            try:
                old = json.loads(path.read_text("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"existing {path} is not valid JSON; remove it to start over: {exc}") from exc
            if old.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"{path} is not a synthetic data set manifest ({old.get('format')!r})")
            if old.get("split") == split and old.get("city") == city:
                self.manifest["entries"] = list(old.get("entries", []))
        self._names = {e["name"] for e in self.manifest["entries"]}

    def image_path(self, name: str) -> Path:
        return self.root / "leftImg8bit" / self.split / self.city / f"{name}_leftImg8bit.png"

    def label_path(self, name: str) -> Path:
        return self.root / "gtFine" / self.split / self.city / f"{name}_gtFine_labelTrainIds.png"

    def mask_path(self, name: str) -> Path:
        return self.root / "gtFine" / self.split / self.city / f"{name}_gtFine_anomalyMask.png"

    def has(self, name: str) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)

    def write(
        self, name: str, image: np.ndarray, label: np.ndarray, anomaly_mask: np.ndarray, extra: dict | None = None
    ) -> None:
        """Write one sample (files first, then the manifest entry) unless it is already there."""
        if self.has(name):
            return
        if image.shape[:2] != label.shape or label.shape != anomaly_mask.shape:
            raise ValueError(f"image {image.shape}, label {label.shape} and mask {anomaly_mask.shape} differ in size")
        atomic_write_bytes(self.image_path(name), png_bytes(image))
        atomic_write_bytes(self.label_path(name), png_bytes(label))
        atomic_write_bytes(self.mask_path(name), png_bytes(anomaly_mask.astype(np.uint8) * 255))
        entry = {
            "name": name,
            "image": str(self.image_path(name).relative_to(self.root)),
            "label": str(self.label_path(name).relative_to(self.root)),
            "anomaly_mask": str(self.mask_path(name).relative_to(self.root)),
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "anomaly_pixels": int(anomaly_mask.sum()),
            **(extra or {}),
        }
        self.manifest["entries"].append(entry)
        self._names.add(name)
        atomic_write_json(self.root / MANIFEST, self.manifest)

    def done(self, summary: dict | None = None) -> Path:
        """Mark the data set complete (with an optional summary, e.g. sampling statistics)."""
        self.manifest["complete"] = True
        if summary:
            self.manifest["summary"] = summary
        path = self.root / MANIFEST
        atomic_write_json(path, self.manifest)
        return path


def read_pair(root: str | Path, entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """Load the (image, label) of one manifest entry."""
    root = Path(root)
    with Image.open(root / entry["image"]) as im:
        image = np.asarray(im.convert("RGB"))
    with Image.open(root / entry["label"]) as lb:
        label = np.asarray(lb)
    return image, label
