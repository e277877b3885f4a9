"""The demo's integration points with the other areas, in one place: cores, metrics and training.

Everything the demo computes goes through the package's own code so that the demo shows what a user deploys:
- time series: ``flow_anomaly_ros.timeseries`` (recordings, ``score_recording`` = the node's ``StreamingScorer``,
  detectors, training) and ``flow_anomaly_ros.evaluation.timeseries_metrics``;
- camera: the camera node's ``FrameProcessor`` on a ``flow_anomaly_ros.runtime`` backend, and
  ``flow_anomaly_ros.evaluation.pixel_metrics``;
- models: ``flow-anomaly ts train`` and the segmentation fine-tuning, cached by config hash (``demo.config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.data.bag_recording import recording_from_bag  # noqa: F401  (shared with `ts train --bag`)
from flow_anomaly_ros.timeseries import status

NS = 1_000_000_000


@dataclass
class DemoModels:
    """The models the demo runs, and the camera decision parameters shared by node and offline path."""

    ts_models: dict[str, Path]  # detector name -> model directory
    seg_model: Path | None
    deployed_detector: str = "realnvp"
    seg_backend: str = "onnxruntime"
    score_method: str = "anomaly_prob"
    threshold: float | None = None  # None = the model's calibrated threshold for score_method
    min_region_area: int = 16
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class WindowScores:
    """Per-window outputs of one time-series detector (arrays of equal length, stamps in seconds)."""

    start_s: np.ndarray
    end_s: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    is_anomaly: np.ndarray
    status: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple[float, float, float, float, bool, int]]) -> WindowScores:
        a = np.array(rows, dtype=np.float64).reshape(-1, 6)
        return cls(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4].astype(bool), a[:, 5].astype(np.int64))

    def __len__(self) -> int:
        return len(self.score)


# --------------------------------------------------------------------------------------------------------------
# Time series
# --------------------------------------------------------------------------------------------------------------


def score_recording(model_dir: str | Path, recording: Any) -> Any:
    """Per-window scores of ``recording`` with the model in ``model_dir`` (the node's StreamingScorer, offline).

    Scores and thresholds are rounded to float32, as ``AnomalyScore`` carries them, so that offline and live
    metrics are computed from the same numbers.
    """
    from flow_anomaly_ros.timeseries.pipeline import score_recording as _score

    results = _score(model_dir, recording)
    return WindowScores.from_rows(
        [
            (r.start_s, r.end_s, float(np.float32(r.score)), float(np.float32(r.threshold)), r.is_anomaly, r.status)
            for r in results
        ]
    )


# the status codes under the names this module has always used (one source: timeseries.status)
STATUS_OK, STATUS_WARMING_UP, STATUS_STALE = status.OK, status.WARMING_UP, status.STALE_INPUT
STATUS_INVALID, STATUS_MODEL_ERROR = status.INVALID_INPUT, status.MODEL_ERROR


def timeseries_metrics(windows: Any, intervals: list[dict[str, Any]], window_s: float, stride_s: float) -> dict:
    """The time-series issue's metrics (``evaluation.timeseries_metrics.evaluate_sequences``) on one sequence.

    As there: non-OK windows have no score; STALE/INVALID windows count as data-quality alarms (a dropout or NaN
    burst is a fault); WARMING_UP/MODEL_ERROR windows do not count.
    """
    from types import SimpleNamespace

    from flow_anomaly_ros.evaluation.timeseries_metrics import Sequence_, evaluate_sequences

    ok = windows.status == STATUS_OK
    quality = (windows.status == STATUS_STALE) | (windows.status == STATUS_INVALID)
    score = np.where(ok, windows.score, np.nan)
    seq = Sequence_(
        start_s=windows.start_s,
        end_s=windows.end_s,
        score=score,
        alarm=(windows.is_anomaly & ok) | quality,
        quality=quality,
        valid=(windows.status != STATUS_WARMING_UP) & (windows.status != STATUS_MODEL_ERROR),
        faults=[SimpleNamespace(start_s=iv["start_s"], end_s=iv["end_s"], fault=iv["kind"]) for iv in intervals],
    )
    return evaluate_sequences([seq], window_s, stride_s)


def window_geometry(model_dir: str | Path) -> tuple[float, float]:
    """(window_s, stride_s) of a time-series model (from its manifest)."""
    from flow_anomaly_ros.model_store import read_manifest

    pipeline = read_manifest(model_dir).get("pipeline", {})
    return float(pipeline.get("window_s", 2.0)), float(pipeline.get("stride_s", 0.1))


# --------------------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------------------


def frame_processor(models: DemoModels) -> Any:
    """The camera node's FrameProcessor configured exactly as the node is in the demo."""
    from flow_anomaly_ros.ros.camera_pipeline import FrameProcessor
    from flow_anomaly_ros.runtime import load_backend

    backend = load_backend(models.seg_backend, models.seg_model, device="cpu")
    method = models.score_method or backend.spec.score_method
    threshold = backend.spec.threshold_for(method) if models.threshold is None else models.threshold
    return FrameProcessor(backend, method, threshold, min_region_area=models.min_region_area)


def camera_metrics(
    scores: list[np.ndarray | None],
    masks: list[np.ndarray],
    labels: list[np.ndarray],
    frame_flags: list[bool],
) -> dict[str, Any]:
    """Pixel metrics (AP, FPR95, AUROC, F1 of the mask) and frame-level precision/recall of ``is_anomaly``."""
    from flow_anomaly_ros.evaluation import pixel_metrics as pm

    out: dict[str, Any] = {}
    if all(s is not None for s in scores):
        out.update(pm.anomaly_metrics(np.stack(scores), np.stack(labels)))
    pred = np.stack(masks)
    gt = np.stack(labels)
    tp = float(np.sum(pred & gt))
    fp = float(np.sum(pred & ~gt))
    fn = float(np.sum(~pred & gt))
    out["mask_precision"] = tp / (tp + fp) if tp + fp else 0.0
    out["mask_recall"] = tp / (tp + fn) if tp + fn else 0.0
    p, r = out["mask_precision"], out["mask_recall"]
    out["mask_f1"] = 2 * p * r / (p + r) if p + r else 0.0
    frames_gt = gt.reshape(len(gt), -1).any(axis=1)
    flags = np.asarray(frame_flags, bool)
    ftp = int(np.sum(flags & frames_gt))
    out["frame_precision"] = ftp / max(1, int(flags.sum()))
    out["frame_recall"] = ftp / max(1, int(frames_gt.sum()))
    return out
