"""Configuration of ``flow-anomaly seg finetune``: one YAML file, validated into dataclasses with clear errors.

Every section and key is listed here with its default; unknown keys are errors (a typo must never be silently
ignored on a multi-hour job). ``config/segmentation_finetune.yaml`` is the documented example.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flow_anomaly_ros.segmentation.spec import BACKBONES, SCORE_METHODS

PATCH_SOURCES = ("random_texture", "noise", "npz", "maf")
DATA_SOURCES = ("street_scenes", "cityscapes")
VAL_SOURCES = ("street_scenes", "cityscapes", "benchmark")


@dataclass
class ModelConfig:
    backbone: str = "resnet101"  # the paper's; mobilenet_v3_large for CPU / edge
    weights: str | None = None  # local checkpoint (e.g. Cityscapes-trained DeepLabV3); never downloaded
    num_inlier_classes: int = 19
    input_size: list[int] | None = None  # stored in the model for deployment; training uses data.crop


@dataclass
class DataConfig:
    source: str = "street_scenes"  # or cityscapes (official layout under root)
    root: str | None = None
    split: str = "train"
    crop: list[int] = field(default_factory=lambda: [256, 512])  # (H, W); the paper trained at 768x768 crops
    num_scenes: int = 2000  # size of the procedural training set
    hflip: bool = True
    seed: int = 0
    # augmentation (street scenes: each sample is drawn at scale x ``scene_size`` and cropped; any source: colour)
    scene_size: list[int] | None = None  # (H, W) scenes are generated at before scaling; None = crop size
    scale: list[float] | None = None  # [min, max] random scale of the scene (or image) before cropping
    color_jitter: float = 0.0  # strength s: brightness/contrast/saturation factors in [1-s, 1+s], hue/gamma shift


@dataclass
class PatchConfig:
    source: str = "random_texture"  # random_texture | noise | npz (path) | maf (path to the patch-MAF model dir)
    path: str | None = None
    patch_size: int = 8
    per_image: int = 1  # the paper pastes one patch per image
    probability: float = 1.0  # fraction of images that get patches
    min_size: int = 16
    max_frac: float = 0.25
    blend: str = "soft"
    ignore_border: bool = True
    maf_mode: str = "outside"
    maf_temperature: float | None = None
    pool_size: int = 512


@dataclass
class LossConfig:
    inlier_weight: float = 1.0
    anomaly_weight: float = 1.0
    energy_weight: float = 0.0  # 0 = the paper's loss; DenseHybrid's beta is DENSEHYBRID_BETA = 0.03


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4  # per process
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    amp: bool = True  # CUDA only (FP16 autocast + GradScaler); ignored on CPU
    freeze_bn: bool = True  # small per-GPU batches: keep the checkpoint's BatchNorm statistics
    grad_clip: float | None = None
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int | None = None  # torch CPU threads per process


@dataclass
class ValidationConfig:
    every: int = 200
    source: str = "street_scenes"  # street_scenes (held-out anomaly kinds) | cityscapes | benchmark
    root: str | None = None
    num_images: int = 16
    size: list[int] = field(default_factory=lambda: [256, 512])
    score_method: str = "anomaly_prob"
    seed: int = 10_000


@dataclass
class OutputConfig:
    dir: str = "runs/seg_finetune"
    checkpoint_every: int = 100
    resume: bool = True


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        if not isinstance(data, dict):
            raise ValueError(f"config must be a mapping of sections, got {type(data).__name__}")
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; valid: {sorted(sections)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            section_cls = f.default_factory  # type: ignore[misc]
            values = data.get(f.name) or {}
            if not isinstance(values, dict):
                raise ValueError(f"config section {f.name!r} must be a mapping")
            names = {g.name for g in dataclasses.fields(section_cls)}
            bad = set(values) - names
            if bad:
                raise ValueError(f"unknown key(s) {sorted(bad)} in section {f.name!r}; valid: {sorted(names)}")
            kwargs[f.name] = section_cls(**values)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> FinetuneConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        m, d, p, t, v = self.model, self.data, self.patches, self.train, self.validation
        checks = [
            (m.backbone in BACKBONES, f"model.backbone must be one of {BACKBONES}"),
            (d.source in DATA_SOURCES, f"data.source must be one of {DATA_SOURCES}"),
            (d.source != "cityscapes" or bool(d.root), "data.root is required for data.source: cityscapes"),
            (len(d.crop) == 2 and min(d.crop) >= 32, "data.crop must be [H, W] with both >= 32"),
            (d.scene_size is None or (len(d.scene_size) == 2 and min(d.scene_size) >= 32),
             "data.scene_size must be [H, W] with both >= 32"),
            (d.scale is None or (len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1]),
             "data.scale must be [min, max] with 0 < min <= max"),
            (0.0 <= d.color_jitter < 1.0, "data.color_jitter must be in [0, 1)"),
            (p.source in PATCH_SOURCES, f"patches.source must be one of {PATCH_SOURCES}"),
            (p.source not in ("npz", "maf") or bool(p.path), f"patches.path is required for {p.source!r}"),
            (0.0 <= p.probability <= 1.0, "patches.probability must be in [0, 1]"),
            (p.per_image >= 0 and p.patch_size >= 1, "patches.per_image >= 0 and patches.patch_size >= 1"),
            (t.steps >= 1 and t.batch_size >= 1, "train.steps and train.batch_size must be >= 1"),
            (t.optimizer in ("sgd", "adamw"), "train.optimizer must be sgd or adamw"),
            (t.lr > 0, "train.lr must be > 0"),
            (t.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda"),
            (v.source in VAL_SOURCES, f"validation.source must be one of {VAL_SOURCES}"),
            (v.source == "street_scenes" or bool(v.root), "validation.root is required for that source"),
            (v.score_method in SCORE_METHODS, f"validation.score_method must be one of {SCORE_METHODS}"),
            (v.every >= 1 and v.num_images >= 1, "validation.every and validation.num_images must be >= 1"),
            (self.output.checkpoint_every >= 1, "output.checkpoint_every must be >= 1"),
            (min(self.loss.inlier_weight, self.loss.anomaly_weight, self.loss.energy_weight) >= 0,
             "loss weights must be >= 0"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
