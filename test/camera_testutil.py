"""Shared by the camera tests: a small real segmentation model (built once per session) and street-scene frames.

The model is an untrained DeepLabV3-MobileNetV3 (seeded, no download; training even a few steps takes minutes on the
shared 2 cores). Its BatchNorm statistics are re-estimated on street scenes (otherwise the untrained net's output is
nearly constant) and its ``anomaly_prob`` threshold is calibrated on normal scenes (a high quantile, so a few percent
of the pixels are flagged). It is saved as a model directory and exported to ONNX at a small resolution, exactly as
`flow-anomaly seg export` does. Its masks are as good as an untrained net's (about chance against ground truth);
the tests check that the NODE reproduces the offline backend, not that the model is good.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np

SCENE_SIZE = (96, 192)  # (H, W) of the test frames: small keeps inference at tens of ms on 2 cores
CALIBRATION_QUANTILE = 97.0


@functools.lru_cache(maxsize=1)
def camera_model_dir() -> Path:
    """Directory with ``manifest.json``, weights and ``model.onnx`` of the test model (built on first use)."""
    import torch

    from flow_anomaly_ros.data.street_scenes import generate_scene
    from flow_anomaly_ros.runtime.export import export_onnx
    from flow_anomaly_ros.runtime.preprocess import preprocess
    from flow_anomaly_ros.segmentation import SegmentationSpec, build_model, save_segmentation_model
    from flow_anomaly_ros.segmentation.scores import score_map

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large").eval()
    spec = SegmentationSpec(backbone="mobilenet_v3_large")
    images = np.stack([generate_scene(*SCENE_SIZE, seed=1000 + i).image for i in range(4)])
    batch = torch.from_numpy(preprocess(images, spec.mean, spec.std).batch)
    for module in model.modules():  # cumulative BatchNorm statistics from one pass over the scenes
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    with torch.no_grad():
        model.train()
        model(batch)
        model.eval()
        logits = model(batch)
    scores = score_map(logits, "anomaly_prob").numpy()
    spec.thresholds["anomaly_prob"] = float(np.percentile(scores, CALIBRATION_QUANTILE))
    out = Path(tempfile.mkdtemp(prefix="flow_anomaly_camera_model_")) / "seg_mobilenet"
    save_segmentation_model(out, model, spec, extra_manifest={"calibration": f"{CALIBRATION_QUANTILE} % of normal"})
    export_onnx(out, sample_size=(64, 128))
    return out


def scene_frames(count: int, seed: int = 0, num_anomalies: int = 2) -> list:
    """``count`` procedural street scenes of SCENE_SIZE with anomalous objects (exact labels)."""
    from flow_anomaly_ros.data.street_scenes import generate_scene

    return [generate_scene(*SCENE_SIZE, seed=seed + i, num_anomalies=num_anomalies) for i in range(count)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
