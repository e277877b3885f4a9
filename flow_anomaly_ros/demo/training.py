"""Training the demo's default models through the package's own training code (nothing demo-specific).

- Time series: the time-series core's training (what ``flow-anomaly ts train`` runs) on the clean early part of the
  KITTI drive, calibrated on the part after it; the demo bag holds later driving only (no overlap).
- Segmentation: the effect experiment's ``maf`` arm (``flow_anomaly_ros.synthesis.effect``): the shipped base
  ``models/seg_base_mobilenet`` fine-tuned with MAF low-likelihood negatives pasted into generated street scenes,
  the threshold calibrated on clean frames, then ONNX export (the node runs ONNX Runtime on CPU).
  ``--seg-from-scratch`` trains a small base from random weights first (what the demo did before a base shipped).

Both write into the directory they are given (the pipeline renames it into the cache atomically) and keep their
run directory next to the cache entry, so a killed training resumes from its last checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flow_anomaly_ros.demo.config import DemoConfig

CALIBRATION_SCENES = 24  # clean frames the camera threshold is calibrated on
CALIBRATION_SEED = 30_000  # disjoint from training (0..), validation (10 000), effect test/validation and the bag
MIN_REGION_AREA = 16  # the node's min_region_area in the demo (DemoModels)


def segmentation_experiment(cfg: DemoConfig, run_dir: Path, progress: bool = False) -> Any:
    """The effect experiment's settings for the demo's camera model (the ``maf`` arm at the demo's sizes)."""
    from flow_anomaly_ros.synthesis.effect import EffectConfig

    sizes: dict[str, Any] = dict(
        size=(cfg.camera_height, cfg.camera_width),
        crop=cfg.seg_train_size,
        base=cfg.seg_base,
        batch_size=cfg.seg_batch_size,
        finetune_steps=cfg.seg_train_steps,
        seed=cfg.seed,
        num_seeds=1,
        # one core: the time-series training runs on the other one at the same time (measured: two threads each
        # on two cores are 4x slower than one each)
        threads=1,
        progress=progress,
    )
    if cfg.seg_quick:
        return EffectConfig.quick(str(run_dir), **sizes)
    return EffectConfig(out=str(run_dir), **sizes)


def train_segmentation(cfg: DemoConfig, out: Path, progress: bool = True) -> Path:
    """Fine-tune the demo's camera model into ``out`` (model directory with ``model.onnx``).

    The shipped base (``models/seg_base_mobilenet``) is fine-tuned with MAF low-likelihood patches pasted into
    generated scenes, exactly as the effect experiment's ``maf`` arm; the anomaly threshold is then calibrated on
    clean frames of the camera's size (:mod:`flow_anomaly_ros.segmentation.calibration`) and the model exported.
    """
    from flow_anomaly_ros.runtime.export import export_onnx
    from flow_anomaly_ros.segmentation.calibration import calibrate_model, clean_scenes
    from flow_anomaly_ros.synthesis.effect import resolve_base, train_arm

    run_dir = out.parent / (out.name.removesuffix(".partial") + ".run")
    exp = segmentation_experiment(cfg, run_dir, progress)
    log = print if progress else (lambda text: None)
    base = resolve_base(exp, run_dir, log)
    run, _ = train_arm(exp, "maf", cfg.seed, base, run_dir, log)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run / "model", out)
    images = clean_scenes(CALIBRATION_SCENES, (cfg.camera_height, cfg.camera_width), CALIBRATION_SEED + cfg.seed)
    calibration = calibrate_model(out, images, "anomaly_prob", min_region_area=MIN_REGION_AREA)
    log(f"camera threshold calibrated on clean frames: {calibration.as_dict()}")
    export_onnx(out, sample_size=tuple(cfg.seg_train_size))
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the checkpoints are no longer needed
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
