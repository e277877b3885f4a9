"""Fine-tune DeepLabV3 + anomaly class on mixed-content images (Hu & Kathula 2024, §4.1).

Each step builds a batch of inlier images (procedural street scenes or Cityscapes crops), pastes synthetic anomaly
patches into them (``patch_source`` + :func:`flow_anomaly_ros.synthesis.paste.paste_batch`; pasted pixels become
class 19), normalises them with the *same* pre-processing the deployed backends use, and minimises
:class:`~flow_anomaly_ros.segmentation.losses.AnomalySegmentationLoss`.

Engineering for long jobs:

- Batches are a pure function of ``(seed, rank, step)``, so a resumed run sees exactly the batches it would have.
- Checkpoints (model, optimiser, AMP scaler, history) are atomic model directories (safetensors + JSON, never
  pickle) written every ``output.checkpoint_every`` steps to ``<dir>/checkpoint``; ``<dir>/model`` always holds the
  latest deployable segmentation model directory (export it with ``flow-anomaly seg export``).
- Validation every ``validation.every`` steps through the deployed inference path (``TorchBackend``): inlier mIoU
  and pixel AP / FPR95 / AUROC of the anomaly score. On street scenes the anomalies are the procedural object kinds,
  which never appear in training, so the number measures generalisation from pasted patches to real objects.
- AMP (FP16 autocast + GradScaler) on CUDA; DistributedDataParallel under ``torchrun`` (NCCL on GPUs, gloo on CPUs);
  at the end every rank's parameter checksum is compared, so a silent DDP divergence fails the job.

Example::

    result = finetune(FinetuneConfig.from_yaml("config/segmentation_finetune.yaml"))
    result.model_dir, result.history[-1]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flow_anomaly_ros.model_store import ModelFileError, atomic_write_json, load_model_dir, save_model_dir
from flow_anomaly_ros.runtime.preprocess import preprocess
from flow_anomaly_ros.segmentation import ddp
from flow_anomaly_ros.segmentation.augment import color_jitter, random_crop, scale_pair
from flow_anomaly_ros.segmentation.config import FinetuneConfig
from flow_anomaly_ros.segmentation.losses import AnomalySegmentationLoss
from flow_anomaly_ros.segmentation.model import AnomalyDeepLabV3, build_model, save_segmentation_model
from flow_anomaly_ros.segmentation.patch_sources import make_patch_source
from flow_anomaly_ros.segmentation.spec import SegmentationSpec

LOG = logging.getLogger(__name__)
CHECKPOINT_KIND = "segmentation/finetune-checkpoint"


@dataclass
class FinetuneResult:
    model_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    parameter_checksums: list[str] = field(default_factory=list)


# --- data ---------------------------------------------------------------------------------------------------------
class TrainingImages:
    """Inlier (image, trainId label) crops; ``batch(rng, n)`` draws a random, augmented batch.

    Street scenes are generated per sample at ``data.scene_size`` times a random ``data.scale`` factor (the
    generator draws at any size, so the scale changes resolution and texture the way a zoom would), then cropped;
    other sources are rescaled. Flip and colour jitter follow (:mod:`flow_anomaly_ros.segmentation.augment`).
    """

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        h, w = cfg.data.scene_size or cfg.data.crop
        if cfg.data.source == "street_scenes":
            from flow_anomaly_ros.data.street_scenes import StreetSceneDataset

            self.dataset: Any = StreetSceneDataset(cfg.data.num_scenes, h, w, seed=cfg.data.seed)
        else:
            from flow_anomaly_ros.data.cityscapes import CityscapesDataset

            self.dataset = CityscapesDataset(cfg.data.root, split=cfg.data.split)

    def _item(self, index: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        if scale != 1.0 and self.cfg.data.source == "street_scenes":
            from flow_anomaly_ros.data.street_scenes import generate_scene, scene_seed

            ds = self.dataset
            scene = generate_scene(round(ds.height * scale), round(ds.width * scale), scene_seed(ds.seed, index))
            return scene.image, scene.label
        item = self.dataset[index]
        image, label = (item.image, item.label) if hasattr(item, "image") else item
        return scale_pair(image, label, scale) if scale != 1.0 else (image, label)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.cfg.data
        h, w = d.crop
        images = np.empty((n, h, w, 3), np.uint8)
        labels = np.empty((n, h, w), np.uint8)
        for i in range(n):
            index = int(rng.integers(len(self.dataset)))
            scale = float(rng.uniform(d.scale[0], d.scale[1])) if d.scale else 1.0
            image, label = random_crop(*self._item(index, scale), (h, w), rng)
            if d.hflip and rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
            images[i], labels[i] = color_jitter(image, d.color_jitter, rng), label
        return images, labels


def validation_set(cfg: FinetuneConfig) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(image, trainId label or None, ood 0/1/255 or None) of the fixed validation set."""
    v = cfg.validation
    if v.source == "street_scenes":
        from flow_anomaly_ros.data.street_scenes import StreetSceneDataset

        ds = StreetSceneDataset(v.num_images, v.size[0], v.size[1], seed=v.seed, anomaly_fraction=1.0)
        out = []
        for s in ds:
            ood = s.anomaly_mask.astype(np.uint8)
            out.append((s.image, s.label, ood))
        return out
    if v.source == "cityscapes":
        from flow_anomaly_ros.data.cityscapes import CityscapesDataset

        ds = CityscapesDataset(v.root, split="val")
        return [(*ds[i], None) for i in range(min(v.num_images, len(ds)))]
    from flow_anomaly_ros.data.anomaly_benchmarks import AnomalyBenchmark

    bench = AnomalyBenchmark(v.root)
    return [(bench[i][0], None, bench[i][1]) for i in range(min(v.num_images, len(bench)))]


def evaluate_model(
    model: AnomalyDeepLabV3,
    spec: SegmentationSpec,
    samples: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]],
    method: str,
    device: torch.device,
) -> dict[str, float]:
    """Inlier mIoU (arg-max over all classes) and anomaly AP / FPR95 / AUROC through the deployed torch backend."""
    from flow_anomaly_ros.evaluation.pixel_metrics import AnomalyPixelAccumulator, ConfusionMatrix
    from flow_anomaly_ros.runtime.torch_backend import TorchBackend
    from flow_anomaly_ros.segmentation.scores import score_map

    was_training = model.training
    backend = TorchBackend(model, spec, device=str(device))
    confusion = ConfusionMatrix(spec.num_inlier_classes)
    acc = AnomalyPixelAccumulator()
    have_ood = False
    for image, label, ood in samples:
        logits = backend.infer(image)
        if label is not None:
            confusion.update(logits.argmax(1)[0], label)
        if ood is not None and (ood == 1).any():
            acc.update(score_map(logits, method)[0], ood)
            have_ood = True
    model.train(was_training)
    out: dict[str, float] = {}
    if confusion.matrix.sum():
        out["miou"] = confusion.miou()
    if have_ood:
        out.update({f"anomaly_{k}": v for k, v in acc.compute().items() if k in ("ap", "fpr95", "auroc")})
    return out


# --- checkpoints --------------------------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}, "shapes": {}}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                key = f"optim.{pid}.{name}"
                tensors[key] = value.detach().cpu().clone()  # a snapshot, not a view of the live state
                meta["shapes"][key] = list(value.shape)
            else:
                meta["state"].setdefault(str(pid), {})[name] = value
    return tensors, meta


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, shape in meta["shapes"].items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = torch.from_numpy(np.ascontiguousarray(tensors[key])).reshape(shape)
    for pid, values in meta["state"].items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: Any, step: int,
                    cfg: FinetuneConfig, history: list[dict[str, Any]]) -> None:  # fmt: skip
    """Atomic resumable checkpoint (model + optimiser + scaler + history) as a model directory."""
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    manifest = {"step": step, "config": cfg.to_dict(), "optimizer": opt_meta, "scaler": scaler.state_dict(),
                "history": history, "backbone": cfg.model.backbone}  # fmt: skip
    save_model_dir(path, CHECKPOINT_KIND, tensors, manifest)


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: Any,
                    cfg: FinetuneConfig) -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
    manifest, tensors = load_model_dir(path, expected_kind=CHECKPOINT_KIND)
    if manifest.get("backbone") != cfg.model.backbone:
        raise ModelFileError(f"checkpoint {path} is for backbone {manifest.get('backbone')!r}, config says "
                             f"{cfg.model.backbone!r}; use another output.dir or output.resume: false")  # fmt: skip
    own = model.state_dict()
    state = {}
    for k, v in own.items():
        arr = tensors.get(f"model.{k}")
        if arr is None:
            raise ModelFileError(f"checkpoint {path} lacks tensor model.{k}")
        state[k] = torch.from_numpy(np.ascontiguousarray(arr)).reshape(v.shape).to(v.dtype)
    model.load_state_dict(state)
    _restore_optimizer(opt, tensors, manifest["optimizer"])
    if manifest.get("scaler"):
        scaler.load_state_dict(manifest["scaler"])
    return int(manifest["step"]), list(manifest.get("history", []))


def parameter_checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- training loop ------------------------------------------------------------------------------------------------
def _freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    """DeepLab's "poly" schedule."""
    return base * (1.0 - min(step, total - 1) / total) ** power


def finetune(cfg: FinetuneConfig, progress: bool = True, patch_source: Any = None) -> FinetuneResult:
    """Run (or resume) fine-tuning; returns where the model went and the validation history."""
    from tqdm import tqdm

    from flow_anomaly_ros.synthesis.paste import paste_batch

    info = ddp.setup(cfg.train.device)
    try:
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        elif info.distributed and info.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
        out_dir = Path(cfg.output.dir)
        ckpt_dir, model_dir = out_dir / "checkpoint", out_dir / "model"
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model.backbone, cfg.model.num_inlier_classes, cfg.model.weights).to(info.device)
        spec = SegmentationSpec(
            backbone=cfg.model.backbone,
            num_inlier_classes=cfg.model.num_inlier_classes,
            input_size=tuple(cfg.model.input_size) if cfg.model.input_size else None,
        )
        optimizer = _make_optimizer(model, cfg)
        amp = cfg.train.amp and info.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        start, history = 0, []
        if cfg.output.resume and (ckpt_dir / "manifest.json").is_file():
            start, history = load_checkpoint(ckpt_dir, model, optimizer, scaler, cfg)
            LOG.warning("resuming from %s at step %d", ckpt_dir, start)
        resumed_from = start
        net: nn.Module = model
        if info.distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.device.index] if info.device.type == "cuda" else None
            )
        images_src = TrainingImages(cfg)
        source = patch_source or make_patch_source(cfg.patches)
        p = cfg.patches
        paste_kwargs = {"min_size": p.min_size, "max_frac": p.max_frac, "blend": p.blend,
                        "ignore_border": p.ignore_border}  # fmt: skip
        loss_fn = AnomalySegmentationLoss(cfg.loss.inlier_weight, cfg.loss.anomaly_weight, cfg.loss.energy_weight,
                                          anomaly_index=spec.anomaly_index)  # fmt: skip
        val_samples = validation_set(cfg) if info.is_main else []
        total = cfg.train.steps
        bar = tqdm(total=total, initial=start, desc="finetune", disable=not (progress and info.is_main),
                   dynamic_ncols=True)  # fmt: skip
        running: dict[str, float] = {}
        t0 = time.perf_counter()
        for step in range(start, total):
            rng = np.random.default_rng([cfg.train.seed, info.rank, step])
            torch.manual_seed(int(rng.integers(2**62)))  # dropout masks too are a function of (seed, rank, step)
            images, labels = images_src.batch(rng, cfg.train.batch_size)
            images, labels, _ = paste_batch(images, labels, source, rng, p.per_image, p.probability, **paste_kwargs)
            x = torch.from_numpy(preprocess(images, spec.mean, spec.std, pad_multiple=1).batch).to(info.device)
            y = torch.from_numpy(labels).to(info.device)
            lr = poly_lr(cfg.train.lr, step, total, cfg.train.poly_power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            net.train()
            if cfg.train.freeze_bn:
                _freeze_batchnorm(net)
            with torch.autocast(info.device.type, dtype=torch.float16, enabled=amp):
                logits = net(x)
            loss, parts = loss_fn(logits.float(), y)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"loss became {float(loss.detach())} at step {step}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in {"loss": float(loss.detach()), **parts}.items()}
            bar.update(1)
            bar.set_postfix(loss=f"{running['loss']:.3f}", anom=f"{running['anomaly_ce']:.3f}", lr=f"{lr:.2e}")
            done = step + 1
            record: dict[str, Any] | None = None
            if done % cfg.validation.every == 0 or done == total:
                if info.is_main:
                    metrics = evaluate_model(model, spec, val_samples, cfg.validation.score_method, info.device)
                    record = {"step": done, "lr": lr, "seconds": time.perf_counter() - t0,
                              **{f"train_{k}": v for k, v in running.items()}, **metrics}  # fmt: skip
                    history.append(record)
                    bar.write(json.dumps(record))
                ddp.barrier(info)
            if done % cfg.output.checkpoint_every == 0 or done == total or record is not None:
                if info.is_main:
                    save_checkpoint(ckpt_dir, model, optimizer, scaler, done, cfg, history)
                    summary = {"training": {"steps": done, "config": cfg.to_dict(), "history": history[-1:]}}
                    save_segmentation_model(model_dir, model, spec, summary)
                    atomic_write_json(out_dir / "metrics.json", {"history": history, "steps": done})
                ddp.barrier(info)
        bar.close()
        checksums = [str(c) for c in ddp.all_gather_objects(info, parameter_checksum(model))]
        if len(set(checksums)) != 1:
            raise RuntimeError(f"DDP ranks ended with different parameters: {checksums}")
        if info.is_main:
            atomic_write_json(out_dir / "metrics.json", {"history": history, "steps": total,
                                                         "world_size": info.world_size,
                                                         "parameter_checksums": checksums})  # fmt: skip
        return FinetuneResult(model_dir, total, history, resumed_from, checksums)
    finally:
        ddp.cleanup(info)
