"""Training the demo's default models through the package's own training code (nothing demo-specific).

- Time series: the time-series core's training (what ``flow-anomaly ts train`` runs) on the clean early part of the
  KITTI drive, calibrated on the part after it; the demo bag holds later driving only (no overlap).
- Segmentation: ``flow_anomaly_ros.segmentation.finetune`` (what ``flow-anomaly seg finetune`` runs) of a mobilenet
  DeepLabV3 on generated street scenes with pasted random-texture anomaly patches, then ONNX export (the node runs
  ONNX Runtime on CPU). No pretrained weights can be downloaded here, so the network starts from random
  initialisation; with a local Cityscapes checkpoint (``model.weights``) the same job fine-tunes instead.

Both write into the directory they are given (the pipeline renames it into the cache atomically) and keep their
run directory next to the cache entry, so a killed training resumes from its last checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flow_anomaly_ros.demo.config import DemoConfig

SEG_LR = 1e-3  # AdamW from random init (SGD 0.01 is the paper's fine-tuning of a pretrained net)


def train_segmentation(cfg: DemoConfig, out: Path, progress: bool = True) -> Path:
    """Fine-tune the demo's segmentation model into ``out`` (model directory with ``model.onnx``)."""
    from flow_anomaly_ros.runtime.export import export_onnx
    from flow_anomaly_ros.segmentation.config import FinetuneConfig
    from flow_anomaly_ros.segmentation.finetune import finetune

    run_dir = out.parent / (out.name.removesuffix(".partial") + ".run")
    h, w = cfg.seg_train_size
    ft = FinetuneConfig.from_dict(
        {
            "model": {"backbone": cfg.seg_backbone},
            "data": {"source": "street_scenes", "crop": [h, w], "num_scenes": 400, "seed": cfg.seed},
            "patches": {"source": "random_texture", "per_image": 1, "probability": 0.8},
            "train": {
                "steps": cfg.seg_train_steps,
                "batch_size": cfg.seg_batch_size,
                "optimizer": "adamw",
                "lr": SEG_LR,
                "weight_decay": 1e-4,
                "freeze_bn": False,  # from random init BatchNorm must learn its statistics
                "device": "cpu",
                "seed": cfg.seed,
                # one core: the time-series training runs on the other one at the same time (measured: two
                # threads each on two cores are 4x slower than one each)
                "threads": 1,
            },
            "validation": {"every": cfg.seg_train_steps, "num_images": 4, "size": [h, w]},
            "output": {"dir": str(run_dir), "checkpoint_every": max(25, cfg.seg_train_steps // 6), "resume": True},
        }
    )
    result = finetune(ft, progress=progress)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(result.model_dir, out)
    export_onnx(out, sample_size=(h, w))
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the checkpoint is no longer needed
    return out


def detector_available(name: str) -> bool:
    """Whether the time-series core offers detector ``name``."""
    from flow_anomaly_ros.timeseries.detectors import make_detector

    try:
        make_detector(name)
    except ValueError:
        return False
    return True


def train_timeseries(cfg: DemoConfig, detector: str, out: Path) -> Path:
    """Train ``detector`` on the clean training part of the drive into ``out`` (a time-series model directory)."""
    from flow_anomaly_ros.demo import timeseries_source

    return timeseries_source.train_detector(cfg, detector, out)
