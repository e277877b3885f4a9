"""The shipped base segmentation model: where it lives, how it is measured, and how a training run becomes it.

``models/seg_base_mobilenet`` is a DeepLabV3-MobileNetV3-Large (19 Cityscapes classes + the anomaly class) trained
from random initialisation on procedural street scenes by ``flow-anomaly seg train-base config/segmentation_base.yaml``
(see ``models/README.md``, the model card). The demo, the effect experiment and the synthesis job fine-tune from it
by default, because a network trained for a few hundred CPU steps from scratch does not segment the scenes, and a
network that does not segment cannot tell an object from the road it stands on.

It ships as an ordinary segmentation model directory (safetensors + manifest, loaded with every check of
:func:`flow_anomaly_ros.segmentation.model.load_segmentation_model`) whose weights are stored in float16 to stay
under 25 MB; loading casts them back to float32. The manifest's ``base_model`` section records the backbone,
classes, input size, the training config, data seed, steps and the measured mIoU (with per-class IoU).

Example::

    path = default_base_model()          # models/seg_base_mobilenet (source tree or installed share)
    report = measure_miou(path, num_images=32, size=(256, 512))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.share import share_dir

BASE_MODEL_NAME = "seg_base_mobilenet"
HELD_OUT_SEED = 10_000  # validation / measurement scenes; training draws scene_seed(data.seed, i) with other seeds


def models_dir() -> Path:
    """The package's ``models/``: the installed share's (colcon) if it has one, else the source tree's."""
    return share_dir("models")


def default_base_model() -> Path:
    """Path of the shipped base model (``$FLOW_ANOMALY_SEG_BASE`` overrides it)."""
    override = os.environ.get("FLOW_ANOMALY_SEG_BASE")
    return Path(override).expanduser() if override else models_dir() / BASE_MODEL_NAME


def measure_miou(
    model: str | os.PathLike[str], num_images: int = 32, size: tuple[int, int] = (256, 512), seed: int = HELD_OUT_SEED
) -> dict[str, Any]:
    """Inlier mIoU and per-class IoU on held-out street scenes (with anomalies, which are left out of the mIoU)."""
    from flow_anomaly_ros.data.street_scenes import StreetSceneDataset
    from flow_anomaly_ros.evaluation.pixel_metrics import ConfusionMatrix
    from flow_anomaly_ros.runtime.torch_backend import TorchBackend

    backend = TorchBackend.from_path(model)
    names = backend.spec.class_names
    confusion = ConfusionMatrix(backend.spec.num_inlier_classes)
    for scene in StreetSceneDataset(num_images, size[0], size[1], seed=seed, anomaly_fraction=1.0):
        confusion.update(backend.infer(scene.image).argmax(1)[0], scene.label)
    iou = confusion.iou()
    present = confusion.matrix.sum(1) > 0
    return {
        "miou": float(confusion.miou()),
        "per_class_iou": {names[i]: round(float(iou[i]), 4) for i in np.flatnonzero(present)},
        "scenes": int(num_images),
        "size": [int(size[0]), int(size[1])],
        "seed": int(seed),
    }


def ship_base_model(
    trained: str | os.PathLike[str],
    out: str | os.PathLike[str],
    training: dict[str, Any],
    measured: dict[str, Any],
) -> Path:
    """Write ``trained`` (a segmentation model directory) as the shippable fp16 base model at ``out`` (atomic)."""

    from flow_anomaly_ros.model_store import save_model_dir
    from flow_anomaly_ros.segmentation.model import load_segmentation_model
    from flow_anomaly_ros.segmentation.spec import MODEL_KIND

    model, spec, manifest = load_segmentation_model(trained)
    tensors = {k: (v.detach().half() if v.is_floating_point() else v.detach()) for k, v in model.state_dict().items()}
    extra = spec.to_manifest()
    extra["base_model"] = {
        "backbone": spec.backbone,
        "classes": spec.class_names,
        "input_size": list(spec.input_size) if spec.input_size else None,
        "weights_dtype": "float16",
        "training": training,
        "measured": measured,
        "source": "procedural street scenes only (flow_anomaly_ros.data.street_scenes); never a real camera image",
    }
    extra["training"] = manifest.get("training", {})
    return save_model_dir(out, MODEL_KIND, tensors, extra)


SHIPPED = "shipped"  # the base model choice that means models/seg_base_mobilenet
SCRATCH = "scratch"  # the choice that means random weights (training from scratch)


def resolve_base_choice(choice: str) -> Path | None:
    """One meaning of a ``base_model`` setting everywhere: ``shipped`` -> the shipped base (checked), ``scratch`` or
    empty -> None (train from scratch), anything else -> that model directory."""
    if choice in ("", SCRATCH):
        return None
    if choice == SHIPPED:
        return require_base_model(default_base_model())
    return Path(choice)


def require_base_model(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a loadable segmentation model directory, else a clear error saying how to get one."""
    from flow_anomaly_ros.model_store import read_manifest

    path = Path(path)
    try:
        read_manifest(path, expected_kind="segmentation")
    except ModelFileError as exc:
        raise ModelFileError(
            f"base segmentation model unusable: {exc}. The repository ships it as models/{BASE_MODEL_NAME}; "
            "rebuild it with `flow-anomaly seg train-base config/segmentation_base.yaml --ship "
            f"models/{BASE_MODEL_NAME}` or train from scratch (demo: --seg-from-scratch)"
        ) from exc
    return path
