"""Choosing the camera node's anomaly threshold on clean frames, and the checks a clean frame must pass.

Why this exists: a threshold fixed in advance (0.5 on the anomaly probability) means nothing for a network whose
scores are not calibrated. The first demo model put the anomaly probability at about 0.49 on *every* pixel, with a
small bias tied to the image border (zero padding makes a CNN position-aware); 0.5 then cut a constant band out of
every frame (5 % of the pixels, the same rows in all frames). So the threshold is chosen on held-out anomaly-free
frames for what the node decides with it: the smallest threshold at which at most ``max_frame_rate`` of clean
frames contain an anomalous region of ``min_region_area`` pixels and at most ``max_pixel_rate`` of clean pixels
are flagged. :func:`clean_frame_stats` measures what the regression test checks: the flagged share of clean pixels
and how often the most-flagged pixel position fires (a band or a stuck spot shows up there at once).

Example::

    result = calibrate_clean_threshold(score_maps, min_region_area=16)
    result.threshold, result.frame_alarm_rate
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_FRAME_RATE = 0.02  # at most 2 % of clean frames may raise an alarm
DEFAULT_MAX_PIXEL_RATE = 2e-4  # at most 0.02 % of clean pixels flagged (the acceptance bound is 0.1 %)
FLOOR = 0.5  # never below the anomaly class winning against the rest


@dataclass(frozen=True)
class Calibration:
    method: str
    threshold: float
    frame_alarm_rate: float  # share of the clean frames with a region >= min_region_area at this threshold
    pixel_rate: float  # share of clean pixels >= threshold
    max_position_rate: float  # share of frames in which the most-flagged pixel position is flagged
    frames: int
    min_region_area: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_region(mask: np.ndarray, min_area: int) -> bool:
    if not mask.any():
        return False
    if min_area <= 1:
        return True
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return bool(count) and int(np.bincount(labels.ravel())[1:].max()) >= min_area


def clean_frame_stats(masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Flagged share of pixels and the worst pixel position's flag frequency over clean-frame masks."""
    stack = np.stack([np.asarray(m, bool) for m in masks])
    per_position = stack.mean(axis=0)
    return {"pixel_rate": float(stack.mean()), "max_position_rate": float(per_position.max()), "frames": len(stack)}


def calibrate_clean_threshold(
    score_maps: Sequence[np.ndarray],
    method: str = "anomaly_prob",
    min_region_area: int = 16,
    max_frame_rate: float = DEFAULT_MAX_FRAME_RATE,
    max_pixel_rate: float = DEFAULT_MAX_PIXEL_RATE,
    floor: float | None = FLOOR,
) -> Calibration:
    """The smallest threshold (not below ``floor``) that meets both false-alarm bounds on ``score_maps``."""
    if not score_maps:
        raise ValueError("calibration needs at least one clean score map")
    maps = [np.asarray(s, np.float32) for s in score_maps]
    if any(not np.all(np.isfinite(m)) for m in maps):
        raise ValueError("clean score maps contain NaN or inf")
    flat = np.concatenate([m.ravel() for m in maps])
    # candidates: high quantiles of the clean scores and every frame's peak (where alarms switch off)
    qs = np.quantile(flat, 1.0 - np.geomspace(0.05, 1e-7, 60))
    peaks = np.array([m.max() for m in maps])
    candidates = np.unique(np.concatenate([qs, np.nextafter(peaks, np.inf)]))
    if floor is not None:
        candidates = np.unique(np.maximum(candidates, floor))
    chosen = float(candidates[-1])
    for thr in candidates:  # ascending: the first that satisfies both bounds
        pixel_rate = float(np.mean(flat >= thr))
        if pixel_rate > max_pixel_rate:
            continue
        alarms = sum(_has_region(m >= thr, min_region_area) for m in maps) / len(maps)
        if alarms <= max_frame_rate:
            chosen = float(thr)
            break
    masks = [m >= chosen for m in maps]
    stats = clean_frame_stats(masks)
    alarms = sum(_has_region(m, min_region_area) for m in masks) / len(maps)
    return Calibration(method, chosen, float(alarms), stats["pixel_rate"], stats["max_position_rate"], len(maps),
                       int(min_region_area))  # fmt: skip


def clean_scenes(num: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Anomaly-free procedural street scenes (RGB) for calibration; seeds disjoint from training by ``seed``."""
    from flow_anomaly_ros.data.street_scenes import StreetSceneDataset

    return [s.image for s in StreetSceneDataset(num, size[0], size[1], seed=seed, anomaly_fraction=0.0)]


def calibrate_model(
    model_dir: Any,
    images: Sequence[np.ndarray],
    method: str = "anomaly_prob",
    min_region_area: int = 16,
    **bounds: float,
) -> Calibration:
    """Score ``images`` with the model (torch backend), calibrate, and write the threshold into its manifest."""
    from flow_anomaly_ros.runtime.torch_backend import TorchBackend

    backend = TorchBackend.from_path(model_dir)
    maps = [backend.predict(im, method=method, threshold=1.0).scores[0] for im in images]
    result = calibrate_clean_threshold(maps, method, min_region_area, **bounds)
    write_threshold(model_dir, result)
    return result


def write_threshold(model_dir: Any, result: Calibration) -> None:
    """Store ``result.threshold`` as the model's threshold for its method, with how it was chosen (atomic)."""
    from pathlib import Path

    from flow_anomaly_ros.model_store import atomic_write_json, read_manifest
    from flow_anomaly_ros.segmentation.evaluate import write_thresholds

    write_thresholds(model_dir, {result.method: result.threshold}, "clean frames")
    manifest = read_manifest(model_dir)
    manifest["threshold_calibration"] = {"rule": "clean-frame false alarms", **result.as_dict()}
    atomic_write_json(Path(model_dir) / "manifest.json", manifest)
