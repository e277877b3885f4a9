"""DeepLabV3 with the 19 Cityscapes classes plus an anomaly class (index 19), as in Hu & Kathula 2024 (§4.1).

``build_model`` returns a torchvision DeepLabV3 (ResNet-101 by default, as in the paper; ResNet-50 and
MobileNetV3-Large for edge and CPU) whose ``forward`` returns the logits tensor ``N x (K+1) x H x W`` directly (no
``{"out": ...}`` dict), so training, ONNX export and every backend share one output contract. It never downloads:
torchvision is called with ``weights=None, weights_backbone=None``; pretrained weights come only from a local file.

Initialising from a checkpoint with K inlier classes keeps the inlier head and adds the anomaly channel as the
*mean of the inlier weights* with its bias lowered by :data:`ANOMALY_INIT_OFFSET`: its logit is then the mean inlier
logit minus 4, which never beats the arg-max (the closed-set segmentation of the checkpoint is unchanged) while its
probability is already highest where the inlier classes are least certain, a sensible prior for fine-tuning.

Example::

    model = build_model("mobilenet_v3_large", weights_path="cityscapes_mbv3.pth").eval()
    logits = model(torch.zeros(1, 3, 256, 512))  # (1, 20, 256, 512)
    save_segmentation_model("models/seg", model, SegmentationSpec(backbone="mobilenet_v3_large"))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import segmentation as tv_seg
from torchvision.models.segmentation.deeplabv3 import DeepLabV3

from flow_anomaly_ros.model_store import ModelFileError, load_model_dir, save_model_dir
from flow_anomaly_ros.segmentation.classes import NUM_INLIER_CLASSES
from flow_anomaly_ros.segmentation.spec import BACKBONES, DEFAULT_BACKBONE, MODEL_KIND, SegmentationSpec

LOG = logging.getLogger(__name__)
ANOMALY_INIT_OFFSET = 4.0  # anomaly logit starts at (mean inlier logit - 4): never the arg-max, exp(-4) ~ 2 % odds
HEAD_PREFIX = "classifier.4."  # the final 1x1 conv of torchvision's DeepLabHead
_BUILDERS = {
    "resnet101": tv_seg.deeplabv3_resnet101,
    "resnet50": tv_seg.deeplabv3_resnet50,
    "mobilenet_v3_large": tv_seg.deeplabv3_mobilenet_v3_large,
}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "weights")
_KEY_PREFIXES = ("module.", "model.", "net.")


class AnomalyDeepLabV3(DeepLabV3):
    """torchvision DeepLabV3 whose forward returns the upsampled logits tensor (K inlier classes + anomaly)."""

    def __init__(self, base: DeepLabV3, backbone_name: str, num_inlier_classes: int) -> None:
        super().__init__(base.backbone, base.classifier, None)
        self.backbone_name = backbone_name
        self.num_inlier_classes = num_inlier_classes

    @property
    def num_classes(self) -> int:
        return self.num_inlier_classes + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        size = x.shape[-2:]
        features = self.backbone(x)["out"]
        logits = self.classifier(features)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_model(
    backbone: str = DEFAULT_BACKBONE,
    num_inlier_classes: int = NUM_INLIER_CLASSES,
    weights_path: str | os.PathLike[str] | None = None,
) -> AnomalyDeepLabV3:
    """Build DeepLabV3 with ``num_inlier_classes + 1`` outputs (anomaly last); optionally initialise from a file.

    ``weights_path`` may be a segmentation model directory, a ``.safetensors`` file or a torch state-dict file
    (``.pt``/``.pth``, read with ``weights_only=True``), holding a full DeepLabV3 of the same backbone with K or K+1
    output classes, or only backbone (ImageNet classification) weights. Raises ``ValueError`` for a bad backbone or
    class count and :class:`ModelFileError` for a missing, unreadable or incompatible file.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if not isinstance(num_inlier_classes, int) or num_inlier_classes < 1:
        raise ValueError(f"num_inlier_classes must be a positive int, got {num_inlier_classes!r}")
    base = _BUILDERS[backbone](weights=None, weights_backbone=None, num_classes=num_inlier_classes + 1, aux_loss=False)
    model = AnomalyDeepLabV3(base, backbone, num_inlier_classes)
    if weights_path is not None:
        state = read_state_dict(weights_path)
        init_from_state_dict(model, state, source=str(weights_path))
    return model


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read tensors from a model directory, ``.safetensors`` or torch file without ever unpickling objects."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"segmentation weights not found: {path} (pretrained weights are never downloaded)")
    if path.is_dir():
        _, tensors = load_model_dir(path)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"cannot read safetensors weights {path}: {exc}") from exc
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (zip), EOFError ...
        raise ModelFileError(
            f"cannot read {path} as a tensor-only checkpoint (torch.load weights_only=True): {exc}"
        ) from exc
    for _ in range(3):  # unwrap {"state_dict": {...}} style containers
        if isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_mapping(obj):
        raise ModelFileError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


def _is_tensor_mapping(obj: Mapping[str, Any]) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    for prefix in _KEY_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _as_backbone_state(state: dict[str, torch.Tensor], model: AnomalyDeepLabV3) -> dict[str, torch.Tensor] | None:
    """Map ImageNet classification weights (``layer1.*`` / ``features.N.*``) to ``backbone.*``, else None."""
    own = model.backbone.state_dict()
    mapped = {}
    for key, value in state.items():
        name = key.removeprefix("features.") if model.backbone_name.startswith("mobilenet") else key
        if name in own:
            mapped["backbone." + name] = value
    return mapped if len(mapped) >= 0.9 * len(own) else None


def init_from_state_dict(model: AnomalyDeepLabV3, state: Mapping[str, torch.Tensor], source: str = "state") -> None:
    """Load ``state`` into ``model``: full model (K or K+1 classes) or backbone only; errors name the mismatch."""
    state = _strip_prefixes(state)
    dropped = [k for k in state if k.startswith("aux_classifier.")]
    state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    if dropped:
        LOG.info("%s: ignoring %d aux_classifier tensors (no auxiliary head is used)", source, len(dropped))
    if not any(k.startswith("backbone.") for k in state):
        backbone_state = _as_backbone_state(state, model)
        if backbone_state is None:
            raise ModelFileError(
                f"{source} holds neither a DeepLabV3 ({model.backbone_name}) state dict nor {model.backbone_name} "
                f"backbone weights (first keys: {list(state)[:4]})"
            )
        _load_strictly(model, backbone_state, source, allow_missing_prefix="classifier.")
        LOG.info("%s: initialised the %s backbone only; the head is random", source, model.backbone_name)
        return
    weight = state.get(HEAD_PREFIX + "weight")
    bias = state.get(HEAD_PREFIX + "bias")
    if weight is None or bias is None:
        raise ModelFileError(f"{source} has no DeepLabV3 head ({HEAD_PREFIX}weight/bias)")
    k = model.num_inlier_classes
    if weight.shape[0] == k:
        state = dict(state)
        state[HEAD_PREFIX + "weight"] = torch.cat([weight, weight.mean(dim=0, keepdim=True)], dim=0)
        state[HEAD_PREFIX + "bias"] = torch.cat([bias, bias.mean().reshape(1) - ANOMALY_INIT_OFFSET])
        LOG.info(
            "%s: kept the %d-class inlier head and added the anomaly channel (mean of inliers - %.1f)",
            source,
            k,
            ANOMALY_INIT_OFFSET,
        )
    elif weight.shape[0] != k + 1:
        raise ModelFileError(
            f"{source} has a head with {weight.shape[0]} classes; this model needs {k} (inlier only) or {k + 1} "
            "(inlier + anomaly)"
        )
    _load_strictly(model, state, source)


def _load_strictly(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, allow_missing_prefix: str | None = None
) -> None:
    own = model.state_dict()
    # 0-d tensors (BatchNorm's num_batches_tracked) come back 1-d from safetensors via numpy: restore their shape
    state = {
        k: v.reshape(own[k].shape) if k in own and own[k].ndim == 0 and v.numel() == 1 else v for k, v in state.items()
    }
    missing = [k for k in own if k not in state and not (allow_missing_prefix and k.startswith(allow_missing_prefix))]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        backbone = getattr(model, "backbone_name", "?")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:2]})")
        raise ModelFileError(
            f"{source} does not fit DeepLabV3-{backbone}: " + "; ".join(parts) + ". Is it for another backbone?"
        )
    merged = dict(own)
    merged.update({k: v.to(own[k].dtype) for k, v in state.items()})
    model.load_state_dict(merged)


def save_segmentation_model(
    path: str | os.PathLike[str],
    model: AnomalyDeepLabV3,
    spec: SegmentationSpec | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a segmentation model directory (weights + manifest from ``spec``)."""
    model = getattr(model, "module", model)  # DDP
    spec = spec or SegmentationSpec(backbone=model.backbone_name, num_inlier_classes=model.num_inlier_classes)
    if spec.backbone != model.backbone_name or spec.num_inlier_classes != model.num_inlier_classes:
        raise ValueError(
            f"spec ({spec.backbone}, {spec.num_inlier_classes}) does not match the model "
            f"({model.backbone_name}, {model.num_inlier_classes})"
        )
    manifest = spec.to_manifest()
    manifest.update(extra_manifest or {})
    tensors = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    return save_model_dir(path, MODEL_KIND, tensors, manifest)


def load_segmentation_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[AnomalyDeepLabV3, SegmentationSpec, dict[str, Any]]:
    """Load a segmentation model directory; returns ``(model in eval mode, spec, manifest)``."""
    manifest, tensors = load_model_dir(path, expected_kind=MODEL_KIND)
    spec = SegmentationSpec.from_manifest(manifest, source=f"{path}/manifest.json")
    model = build_model(spec.backbone, spec.num_inlier_classes)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    _load_strictly(model, state, str(path))
    return model.to(device).eval(), spec, manifest
