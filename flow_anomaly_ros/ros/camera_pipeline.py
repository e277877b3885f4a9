"""What the camera node does with one frame, without ROS: backend → score map → mask, overlay, regions.

The node owns no algorithm: logits come from :mod:`flow_anomaly_ros.runtime` (``backend.infer``), scores from
:func:`flow_anomaly_ros.segmentation.scores.score_map`, resizing from
:func:`flow_anomaly_ros.runtime.preprocess.resize_map`, and the decision is ``score >= threshold`` exactly as in
``backend.predict``. This module only arranges those calls so that a frame costs little more than the network:

- scores are computed in row chunks (``score_map`` is per pixel; chunks of ~256K pixels keep the 20-channel softmax in
  cache, ~2x faster than one call on a 1024x2048 frame, equal up to float rounding);
- everything is decided at the network resolution and resized ONCE to the image size (the mask by nearest
  neighbour, the score map bilinearly and only when it is published);
- connected components (scipy.ndimage, 8-connectivity) run on the network-resolution mask and their boxes and areas
  are scaled to image pixels; the overlay tints only the anomalous pixels (a boolean-indexed blend, no per-pixel
  Python).

:class:`FrameMailbox` is the real-time part, between the subscription callback and the worker. With one slot (the
vehicle default) a new frame replaces an unprocessed one (counted as dropped), so the worker always takes the newest
frame and no queue can grow. With N slots (``pending_frames``, for replaying a bag to evaluate it, where every frame
counts) frames wait in order and only the oldest beyond N is dropped and counted, so a CPU stall of up to N frame
periods loses nothing.

Example::

    processor = FrameProcessor(backend, method="anomaly_prob", threshold=0.5)
    frame = processor.process(rgb)            # FrameResult: mask (H x W uint8 0/255), regions, timings
    overlay = processor.overlay(rgb, frame)   # H x W x 3 uint8
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flow_anomaly_ros.runtime.preprocess import resize_map
from flow_anomaly_ros.segmentation.scores import score_map

CHUNK_PIXELS = 1 << 18  # score_map works on slabs of about this many pixels (256K px x 20 classes = 20 MB)
DEFAULT_OVERLAY_COLOR = (255, 0, 255)  # magenta, the anomaly colour of segmentation.classes


@dataclass(frozen=True)
class Region:
    """A connected anomalous component in image pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    area: int  # anomalous pixels (image resolution, estimated from the network-resolution mask)
    max_score: float


@dataclass
class FrameResult:
    """One processed frame: low-resolution decision plus the image-size mask and the timings."""

    image_size: tuple[int, int]  # (H, W)
    scores_lo: np.ndarray  # h x w float32 at the network resolution
    mask_lo: np.ndarray  # h x w bool
    logits: np.ndarray  # 1 x C x h x w float32 (kept for the optional semantic map)
    mask: np.ndarray  # H x W uint8, 255 = anomaly
    threshold: float
    inference_s: float
    scoring_s: float
    regions: list[Region] = field(default_factory=list)

    @property
    def anomaly_ratio(self) -> float:
        return float(self.mask_lo.mean()) if self.mask_lo.size else 0.0

    @property
    def max_score(self) -> float:
        return float(self.scores_lo.max()) if self.scores_lo.size else float("nan")

    @property
    def mean_score(self) -> float:
        return float(self.scores_lo.mean()) if self.scores_lo.size else float("nan")


def chunked_score_map(logits: np.ndarray, method: str, chunk_pixels: int = CHUNK_PIXELS) -> np.ndarray:
    """``score_map(logits, method)[0]`` for one ``1 x C x h x w`` logits array, computed in row slabs."""
    _, _, h, w = logits.shape
    rows = max(1, int(chunk_pixels) // max(1, w))
    if rows >= h:
        return np.asarray(score_map(logits, method), np.float32)[0]
    out = np.empty((h, w), np.float32)
    for r in range(0, h, rows):
        out[r : r + rows] = score_map(logits[:, :, r : r + rows], method)[0]
    return out


def chunked_argmax(logits: np.ndarray, chunk_pixels: int = CHUNK_PIXELS) -> np.ndarray:
    """Per-pixel class (arg-max over channels, as ``backend.predict``) of ``1 x C x h x w`` logits, as uint8."""
    _, _, h, w = logits.shape
    rows = max(1, int(chunk_pixels) // max(1, w))
    out = np.empty((h, w), np.uint8)
    for r in range(0, h, rows):
        out[r : r + rows] = logits[0, :, r : r + rows].argmax(axis=0)
    return out


class FrameProcessor:
    """Backend + score method + threshold → mask, regions, overlay, score and class maps for single frames."""

    def __init__(
        self,
        backend: Any,
        method: str,
        threshold: float,
        min_region_area: int = 0,
        max_regions: int = 32,
        overlay_color: tuple[int, int, int] = DEFAULT_OVERLAY_COLOR,
        overlay_alpha: float = 0.6,
    ) -> None:
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {overlay_alpha}")
        self.backend = backend
        self.method = method
        self.threshold = float(threshold)
        self.min_region_area = int(min_region_area)
        self.max_regions = int(max_regions)
        self.overlay_alpha = float(overlay_alpha)
        self._tint = np.asarray(overlay_color, np.float32) * self.overlay_alpha

    def process(self, rgb: np.ndarray) -> FrameResult:
        """Run the network on one ``H x W x 3`` uint8 RGB image; returns the mask at the image size and regions."""
        h_img, w_img = int(rgb.shape[0]), int(rgb.shape[1])
        t0 = time.perf_counter()
        logits = self.backend.infer(rgb)
        t1 = time.perf_counter()
        scores_lo = chunked_score_map(logits, self.method)
        mask_lo = scores_lo >= self.threshold
        mask_u8 = mask_lo.view(np.uint8) * np.uint8(255)
        mask = resize_map(mask_u8[None], (h_img, w_img), nearest=True)[0]
        t2 = time.perf_counter()
        frame = FrameResult((h_img, w_img), scores_lo, mask_lo, logits, mask, self.threshold, t1 - t0, t2 - t1)
        frame.regions = self.regions(frame)
        return frame

    def regions(self, frame: FrameResult) -> list[Region]:
        """Connected components of the low-resolution mask, scaled to image pixels, largest first."""
        from scipy import ndimage

        if not frame.mask_lo.any():
            return []
        labels, count = ndimage.label(frame.mask_lo, structure=np.ones((3, 3), bool))
        h_lo, w_lo = frame.mask_lo.shape
        h_img, w_img = frame.image_size
        sy, sx = h_img / h_lo, w_img / w_lo
        index = np.arange(1, count + 1)
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:] * (sy * sx)
        maxima = np.asarray(ndimage.maximum(frame.scores_lo, labels, index), np.float32).reshape(-1)
        out = []
        for i, sl in enumerate(ndimage.find_objects(labels)):
            if sl is None or areas[i] < self.min_region_area:
                continue
            y0, y1 = int(np.floor(sl[0].start * sy)), min(h_img, int(np.ceil(sl[0].stop * sy)))
            x0, x1 = int(np.floor(sl[1].start * sx)), min(w_img, int(np.ceil(sl[1].stop * sx)))
            out.append(Region(x0, y0, x1 - x0, y1 - y0, int(areas[i] + 0.5), float(maxima[i])))
        out.sort(key=lambda r: r.area, reverse=True)
        return out[: self.max_regions]

    def overlay(self, rgb: np.ndarray, frame: FrameResult) -> np.ndarray:
        """The image with anomalous pixels blended towards the overlay colour (new ``H x W x 3`` uint8 array)."""
        out = np.array(rgb, dtype=np.uint8, copy=True, order="C")
        selected = frame.mask != 0
        if selected.any():
            pixels = out[selected].astype(np.float32)
            pixels *= 1.0 - self.overlay_alpha
            pixels += self._tint
            out[selected] = pixels.astype(np.uint8)
        return out

    def score_image(self, frame: FrameResult) -> np.ndarray:
        """The anomaly score map at the image size (bilinear, as ``backend.predict``), float32."""
        return resize_map(frame.scores_lo[None], frame.image_size, nearest=False)[0]

    def semantic_image(self, frame: FrameResult) -> np.ndarray:
        """The class map (trainIds, anomaly = last class) at the image size, uint8."""
        return resize_map(chunked_argmax(frame.logits)[None], frame.image_size, nearest=True)[0]


class FrameMailbox:
    """Bounded mailbox of ``capacity`` slots: ``put`` beyond it drops the oldest unprocessed item (counted in
    ``dropped``); ``take`` waits for the oldest. ``capacity`` 1 is "only the newest frame matters"."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._cond = threading.Condition()
        self._items: deque[Any] = deque()
        self._closed = False
        self.dropped = 0
        self.accepted = 0

    def put(self, item: Any) -> bool:
        """Store ``item``; returns True when that dropped an older unprocessed one."""
        with self._cond:
            dropped = len(self._items) >= self.capacity
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.accepted += 1
            self._cond.notify()
            return dropped

    def take(self, timeout: float | None = None) -> Any:
        """The oldest waiting item (removing it), or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
