"""What a segmentation model expects and produces: the ``segmentation`` model-directory manifest.

A segmentation model directory (written with :mod:`flow_anomaly_ros.model_store`) holds ``weights.safetensors`` (the
torchvision DeepLabV3 state dict, torchvision key names), ``manifest.json`` with the fields of
:class:`SegmentationSpec`, and after ``flow-anomaly seg export`` also ``model.onnx`` (which carries the same spec in
its ONNX metadata, so a node given only the ONNX file still knows classes and normalisation) and, on GPU machines,
cached TensorRT engines. This module has no torch import so that the ONNX Runtime and TensorRT paths stay light.

Example::

    spec = SegmentationSpec(backbone="mobilenet_v3_large")
    spec.threshold_for("anomaly_prob")  # 0.5
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.segmentation.classes import IGNORE_ID, NUM_INLIER_CLASSES, class_names

MODEL_KIND = "segmentation/deeplabv3"
ONNX_FILE = "model.onnx"
ONNX_METADATA_KEY = "flow_anomaly_ros.segmentation_spec"
BACKBONES: tuple[str, ...] = ("resnet101", "resnet50", "mobilenet_v3_large")
DEFAULT_BACKBONE = "resnet101"  # the paper's DeepLabV3 + ResNet-101
SCORE_METHODS: tuple[str, ...] = ("anomaly_prob", "max_softmax", "max_logit", "energy", "densehybrid")
# torchvision's DeepLabV3 (and the ImageNet backbones it is built on) expects ImageNet-normalised RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Output stride is 8 (ResNet) or 16 (MobileNetV3); padding to 16 keeps feature grids aligned for every backbone.
DEFAULT_PAD_MULTIPLE = 16
# Only the anomaly-class probability has a natural default threshold; the baselines need calibration
# (`flow-anomaly seg evaluate --calibrate`), which writes theirs into the manifest.
DEFAULT_THRESHOLDS = {"anomaly_prob": 0.5}


@dataclass
class SegmentationSpec:
    """Everything a backend needs besides the weights: classes, normalisation, input size, score defaults."""

    backbone: str = DEFAULT_BACKBONE
    num_inlier_classes: int = NUM_INLIER_CLASSES
    class_names: list[str] = field(default_factory=list)
    ignore_index: int = IGNORE_ID
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] | None = None  # (H, W) the network runs at; None = the image's own size
    pad_multiple: int = DEFAULT_PAD_MULTIPLE
    score_method: str = "anomaly_prob"
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = class_names(self.num_inlier_classes)
        self.validate()

    @property
    def num_classes(self) -> int:
        return self.num_inlier_classes + 1

    @property
    def anomaly_index(self) -> int:
        return self.num_inlier_classes

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if int(self.num_inlier_classes) < 1:
            raise ValueError(f"num_inlier_classes must be >= 1, got {self.num_inlier_classes}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries, expected {self.num_classes}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(float(s) <= 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values (std > 0), got mean={self.mean} std={self.std}")
        if self.input_size is not None:
            if len(self.input_size) != 2 or any(int(v) < 16 for v in self.input_size):
                raise ValueError(f"input_size must be (H, W) with both >= 16, got {self.input_size}")
            self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if int(self.pad_multiple) < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if self.score_method not in SCORE_METHODS:
            raise ValueError(f"score_method must be one of {SCORE_METHODS}, got {self.score_method!r}")
        for method in self.thresholds:
            if method not in SCORE_METHODS:
                raise ValueError(f"threshold given for unknown score method {method!r}; valid: {SCORE_METHODS}")
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]

    def threshold_for(self, method: str | None = None) -> float:
        """Decision threshold of ``method`` (default: the spec's score method); clear error when uncalibrated."""
        method = method or self.score_method
        if method not in self.thresholds:
            raise ValueError(
                f"no threshold for score method {method!r} in this model (have {sorted(self.thresholds)}); "
                "calibrate one with `flow-anomaly seg evaluate --calibrate` or give it explicitly"
            )
        return float(self.thresholds[method])

    def to_manifest(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_classes"] = self.num_classes
        d["anomaly_index"] = self.anomaly_index
        d["input_size"] = list(self.input_size) if self.input_size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["color_order"] = "RGB"
        d["output"] = "logits N x num_classes x H x W (float32), anomaly class last"
        return d

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], source: str = "manifest") -> SegmentationSpec:
        """Build from a manifest dict (extra keys ignored); ``ModelFileError`` when a field is missing or bad."""
        names = {f for f in cls.__dataclass_fields__}
        try:
            kwargs = {k: v for k, v in manifest.items() if k in names}
            if kwargs.get("input_size") is not None:
                kwargs["input_size"] = tuple(kwargs["input_size"])
            if "backbone" not in kwargs:
                raise ValueError("field 'backbone' missing")
            spec = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{source} is not a valid segmentation model description: {exc}") from exc
        if manifest.get("anomaly_index", spec.anomaly_index) != spec.anomaly_index:
            raise ModelFileError(f"{source}: anomaly_index {manifest['anomaly_index']} != {spec.anomaly_index}")
        return spec

    def to_json(self) -> str:
        return json.dumps(self.to_manifest(), sort_keys=True)
