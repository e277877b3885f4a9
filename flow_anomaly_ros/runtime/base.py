"""The backend interface every inference engine implements, and the class/score-map prediction built on it.

A backend turns uint8 RGB images into logits ``N x (K+1) x h x w`` (float32 numpy, anomaly class last) where
``h x w`` is the network resolution (the image size unless the model has an ``input_size``). Subclasses only
implement :meth:`SegmentationBackend._run` on the shared pre-processed batch; validation, pre-processing, cropping,
score maps and resizing back to the image live here once.

Example::

    backend = load_backend("onnxruntime", "models/seg")
    logits = backend.infer(image)  # (1, 20, H, W)
    pred = backend.predict(image)  # class map, score map and anomaly mask at the image's resolution
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flow_anomaly_ros.runtime.preprocess import Preprocessed, as_image_batch, crop_logits, preprocess, resize_map
from flow_anomaly_ros.segmentation.spec import SegmentationSpec


@dataclass
class Prediction:
    """Per-pixel outputs at the input images' resolution."""

    classes: np.ndarray  # N x H x W uint8 (arg-max over all classes; anomaly = spec.anomaly_index)
    scores: np.ndarray  # N x H x W float32 anomaly score (higher = more anomalous)
    anomaly_mask: np.ndarray  # N x H x W bool, scores >= threshold
    method: str
    threshold: float


class SegmentationBackend:
    """Base class: ``infer`` (logits) and ``predict`` (class/score maps) over one shared pre-processing."""

    kind = "base"

    def __init__(self, spec: SegmentationSpec, device: str, precision: str) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.name = f"{self.kind}:{device}:{precision}"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a float32 ``N x 3 x H x W`` batch; return float32 logits of the same H x W."""
        raise NotImplementedError

    def preprocess(self, images: np.ndarray) -> Preprocessed:
        s = self.spec
        return preprocess(images, s.mean, s.std, s.input_size, s.pad_multiple)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB ``HxWx3`` or ``NxHxWx3`` → float32 logits ``N x num_classes x h x w``."""
        prep = self.preprocess(images)
        logits = np.asarray(self._run(prep.batch))
        if logits.shape[1] != self.spec.num_classes:
            raise RuntimeError(
                f"{self.name}: model returned {logits.shape[1]} classes, spec says {self.spec.num_classes}"
            )
        return crop_logits(logits, prep)

    def predict(self, images: np.ndarray, method: str | None = None, threshold: float | None = None) -> Prediction:
        """Class map, anomaly score map and mask at the images' own resolution."""
        from flow_anomaly_ros.segmentation.scores import score_map

        method = method or self.spec.score_method
        threshold = self.spec.threshold_for(method) if threshold is None else float(threshold)
        batch = as_image_batch(images)
        h, w = batch.shape[1:3]
        logits = self.infer(batch)
        classes = logits.argmax(axis=1).astype(np.uint8)
        scores = np.asarray(score_map(logits, method), np.float32)
        classes = resize_map(classes, (h, w), nearest=True)
        scores = resize_map(scores, (h, w), nearest=False)
        return Prediction(classes, scores, scores >= threshold, method, threshold)

    def close(self) -> None:
        """Release engine resources (sessions, CUDA contexts); safe to call twice."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.spec.backbone}>"
