"""The offline synthesis job: inlier frames → patch MAF → negatives → fine-tuning → ONNX → TensorRT engine.

ROS-free core of ``synthesis_trainer_node`` (the node only gathers frames from a topic, exposes start / stop /
resume and publishes progress). Stages, each with its outputs in ``work_dir`` and a flag in ``job_state.json``:

========= ===========================================================================================================
gather    frames (topic, bag, image directory or procedural scenes) → ``dataset/`` in the Cityscapes layout; frames
          without labels get pseudo-labels from ``base_model`` (arg-max over inlier classes)
maf_train patches of the frames → MAF trained by NLL (``maf_checkpoint/`` every N steps, ``maf/`` at the end)
synthesis ``num_negatives`` low-likelihood patches → ``negatives.npz`` (+ sampling statistics), example images with
          pasted negatives → ``synthetic/`` (Cityscapes layout + manifest), Figures 9/10 → ``figures/``
finetune  DeepLabV3 fine-tuned on ``dataset/`` with the negatives pasted on the fly → ``finetune/model``
          (resumable checkpoints in ``finetune/checkpoint``)
export    ONNX with the model spec embedded → ``finetune/model/model.onnx``
engine    TensorRT engine (cached next to the ONNX file) where ``tensorrt`` imports; skipped otherwise
========= ===========================================================================================================

Every file is written atomically (:mod:`flow_anomaly_ros.model_store`); a job killed at any point resumes from the
last completed stage and, inside the MAF and fine-tuning stages, from their last checkpoint. ``stop()`` takes effect
at the next training step (a checkpoint is written for the MAF; the fine-tuning redoes the steps since its last
checkpoint).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.model_store import atomic_write_bytes, atomic_write_json
from flow_anomaly_ros.segmentation.base_model import SCRATCH, resolve_base_choice
from flow_anomaly_ros.synthesis.sampling_defaults import (
    DEFAULT_HIGH_QUANTILE,
    DEFAULT_LOW_QUANTILE,
    DEFAULT_TEMPERATURE,
)

LOG = logging.getLogger(__name__)
STAGES = ("gather", "maf_train", "synthesis", "finetune", "export", "engine")  # TrainingStatus.stage names
SOURCES = ("topic", "directory", "bag", "scenes")
STATE_FILE = "job_state.json"
GATHER_CITY = "gathered"


POSITIVE_INTS = (
    "num_frames", "gather_every_n", "patch_size", "patches_per_frame", "maf_transforms", "maf_hidden", "maf_blocks",
    "maf_steps", "maf_batch_size", "maf_checkpoint_every", "num_negatives", "finetune_steps", "batch_size",
    "finetune_checkpoint_every", "threads",
)  # fmt: skip


class JobStopped(Exception):
    """Raised inside a stage when a stop was requested."""


@dataclass
class JobConfig:
    """Everything the job needs; the node's parameters map one to one onto these fields."""

    work_dir: str = "synthesis_job"
    source: str = "scenes"  # topic | directory | bag | scenes
    image_dir: str = ""
    bag_path: str = ""
    bag_topic: str = ""
    num_frames: int = 200  # frames to gather (topic: wait for this many; others: at most this many)
    gather_every_n: int = 1  # keep every n-th frame of a topic or bag
    gather_timeout_s: float = 600.0  # topic: fail if the frames do not arrive within this time
    scene_height: int = 128
    scene_width: int = 256
    # segmentation model to start from and to pseudo-label unlabelled frames with: shipped (models/seg_base_mobilenet,
    # the default), scratch (random weights, `backbone`) or a model directory
    base_model: str = "shipped"
    backbone: str = "mobilenet_v3_large"  # used when base_model is scratch
    patch_size: int = 8
    patches_per_frame: int = 64
    patch_scale: float = 1.0
    maf_transforms: int = 4
    maf_hidden: int = 128
    maf_blocks: int = 2
    maf_steps: int = 2000
    maf_lr: float = 1e-3
    maf_batch_size: int = 256
    maf_checkpoint_every: int = 100
    sampling_mode: str = "outside"
    temperature: float = DEFAULT_TEMPERATURE
    low_quantile: float = DEFAULT_LOW_QUANTILE
    high_quantile: float = DEFAULT_HIGH_QUANTILE
    num_negatives: int = 2048
    synthetic_examples: int = 16
    finetune_steps: int = 1000
    batch_size: int = 4
    lr: float = 0.005
    crop_height: int = 128
    crop_width: int = 256
    patches_per_image: int = 1
    finetune_checkpoint_every: int = 50
    export_onnx: bool = True
    build_engine: bool = True
    engine_precision: str = "fp16"
    seed: int = 0
    threads: int = 2

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown job setting(s) {sorted(unknown)}")
        cfg = cls(**values)
        problems = cfg.problems()
        if problems:
            raise ValueError("invalid job settings: " + "; ".join(problems))
        return cfg

    @property
    def from_scratch(self) -> bool:
        return self.base_model in ("", SCRATCH)

    def problems(self) -> list[str]:
        """Every problem with these settings (empty when valid)."""
        out = []
        if self.source not in SOURCES:
            out.append(f"source={self.source!r} is not one of {list(SOURCES)}")
        if self.source == "directory" and not self.image_dir:
            out.append("source=directory needs image_dir")
        if self.source == "bag" and not self.bag_path:
            out.append("source=bag needs bag_path")
        if not self.work_dir:
            out.append("work_dir must not be empty")
        for name in POSITIVE_INTS:
            if int(getattr(self, name)) < 1:
                out.append(f"{name} must be >= 1")
        if min(self.crop_height, self.crop_width, self.scene_height, self.scene_width) < 32:
            out.append("crop and scene sizes must be >= 32 pixels")
        if self.sampling_mode not in ("outside", "boundary", "any"):
            out.append(f"sampling_mode={self.sampling_mode!r} is not one of outside, boundary, any")
        if not 0 <= self.low_quantile < self.high_quantile <= 1:
            out.append("quantiles must satisfy 0 <= low_quantile < high_quantile <= 1")
        if self.temperature <= 0 or self.maf_lr <= 0 or self.lr <= 0 or self.patch_scale <= 0:
            out.append("temperature, maf_lr, lr and patch_scale must be > 0")
        if self.from_scratch and self.batch_size < 2:
            out.append("batch_size must be >= 2 when training from scratch (BatchNorm statistics are trained)")
        if self.source in ("topic", "bag") and self.from_scratch:
            out.append(f"source={self.source} gives frames without labels: set base_model (shipped or a "
                       "segmentation model directory) for pseudo-labels")  # fmt: skip
        if self.gather_timeout_s <= 0:
            out.append("gather_timeout_s must be > 0")
        if self.engine_precision not in ("fp32", "fp16", "int8"):
            out.append("engine_precision must be fp32, fp16 or int8")
        return out


@dataclass
class Progress:
    """What the job reports (the node turns it into TrainingStatus and diagnostics)."""

    stage: str = ""
    progress: float = 0.0  # within the stage
    overall: float = 0.0
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    message: str = ""


class SynthesisJob:
    """Runs the stages in order, skipping completed ones; ``run()`` blocks (the node calls it in a thread)."""

    def __init__(self, config: JobConfig, on_progress: Callable[[Progress], None] | None = None) -> None:
        self.config = config
        self.work = Path(config.work_dir)
        self.on_progress = on_progress or (lambda p: None)
        self._stop = threading.Event()
        self._frames: list[np.ndarray] = []
        self._frames_lock = threading.Lock()
        self._frame_counter = 0
        self.progress = Progress()
        self.state = self._read_state()

    # -- state ---------------------------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        path = self.work / STATE_FILE
        if path.is_file():
            try:
                state = json.loads(path.read_text("utf-8"))
                if isinstance(state, dict) and isinstance(state.get("stages"), dict):
                    return state
            except (OSError, ValueError):
                LOG.warning("%s is unreadable; the job restarts from the beginning", path)
        return {"stages": {}, "config": asdict(self.config)}

    def _mark_done(self, stage: str, info: dict[str, Any]) -> None:
        self.state["stages"][stage] = {"done": True, "finished_unix": time.time(), **info}
        self.state["config"] = asdict(self.config)
        atomic_write_json(self.work / STATE_FILE, self.state)

    def done(self, stage: str) -> bool:
        return bool(self.state["stages"].get(stage, {}).get("done"))

    @property
    def complete(self) -> bool:
        return all(self.done(s) for s in STAGES)

    @property
    def has_progress(self) -> bool:
        return (self.work / STATE_FILE).is_file() or (self.work / "maf_checkpoint").is_dir()

    def reset(self) -> None:
        """Forget every output of a previous job in ``work_dir`` (``start`` does this; ``resume`` does not)."""
        for name in ("dataset", "maf_checkpoint", "maf", "negatives.npz", "synthetic", "figures", "finetune",
                     STATE_FILE):  # fmt: skip
            path = self.work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.state = {"stages": {}, "config": asdict(self.config)}

    # -- control -------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise JobStopped()

    def offer_frame(self, rgb: np.ndarray) -> bool:
        """A frame from the image topic; kept (copied) while the gather stage waits for frames."""
        if not self.wants_frames:
            return False
        with self._frames_lock:
            self._frame_counter += 1
            if (self._frame_counter - 1) % self.config.gather_every_n:
                return False
            if len(self._frames) >= self.config.num_frames:
                return False
            self._frames.append(np.ascontiguousarray(rgb, dtype=np.uint8).copy())
        return True

    @property
    def wants_frames(self) -> bool:
        """True while a topic job has not finished gathering (the node converts images only then)."""
        return self.config.source == "topic" and not self.done("gather")

    def _report(self, stage: str, progress: float, **kw: Any) -> None:
        idx = STAGES.index(stage)
        self.progress = Progress(stage=stage, progress=float(progress), overall=(idx + float(progress)) / len(STAGES),
                                 **kw)  # fmt: skip
        self.on_progress(self.progress)

    # -- run -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run every stage that is not done yet; raises :class:`JobStopped` when stopped."""
        import torch

        self._stop.clear()
        self.work.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(self.config.threads)
        for stage in STAGES:
            if self.done(stage):
                continue
            self._check_stop()
            self._report(stage, 0.0, message=f"{stage} started")
            info = getattr(self, f"_stage_{stage}")()
            self._mark_done(stage, info)
            self._report(stage, 1.0, message=f"{stage} done")
        return self.state

    # -- stages --------------------------------------------------------------------------------------------------
    def _dataset_paths(self, name: str) -> tuple[Path, Path]:
        root = self.work / "dataset"
        return (
            root / "leftImg8bit" / "train" / GATHER_CITY / f"{name}_leftImg8bit.png",
            root / "gtFine" / "train" / GATHER_CITY / f"{name}_gtFine_labelTrainIds.png",
        )

    def _frames_iter(self):
        from flow_anomaly_ros.synthesis.sources import frames_from_bag, frames_from_dir, frames_from_scenes

        c = self.config
        if c.source == "directory":
            yield from frames_from_dir(c.image_dir, c.num_frames)
        elif c.source == "bag":
            yield from frames_from_bag(c.bag_path, c.bag_topic or None, c.num_frames, c.gather_every_n)
        elif c.source == "scenes":
            yield from frames_from_scenes(c.num_frames, c.scene_height, c.scene_width, seed=c.seed)
        else:
            yield from self._topic_frames()

    def _topic_frames(self):
        """Frames offered by the node; after a restart the frames already on disk count, so only the rest is awaited."""
        c = self.config
        taken = len(list((self.work / "dataset" / "leftImg8bit" / "train" / GATHER_CITY).glob("*_leftImg8bit.png")))
        for i in range(taken):
            yield f"frame_{i:06d}", None, None  # on disk already: skipped by the gather stage
        deadline = time.monotonic() + c.gather_timeout_s
        while taken < c.num_frames:
            self._check_stop()
            with self._frames_lock:
                fresh, self._frames = self._frames[: c.num_frames - taken], []
            for rgb in fresh:
                yield f"frame_{taken:06d}", rgb, None
                taken += 1
            if taken < c.num_frames:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"only {taken} of {c.num_frames} frames arrived within gather_timeout_s="
                        f"{c.gather_timeout_s}; is the image topic publishing?"
                    )
                time.sleep(0.05)

    def _stage_gather(self) -> dict[str, Any]:
        from flow_anomaly_ros.synthesis.dataset_writer import png_bytes

        c = self.config
        pseudo = None
        count = pseudo_labelled = 0
        for name, image, label in self._frames_iter():
            self._check_stop()
            image_path, label_path = self._dataset_paths(f"{count:06d}_{name}"[:120])
            if not (image_path.is_file() and label_path.is_file()):
                if image is None:
                    raise RuntimeError(f"gathered frame {image_path} is missing; start the job afresh")
                if label is None:
                    if pseudo is None:
                        pseudo = self._pseudo_labeller()
                    label = pseudo(image)
                    pseudo_labelled += 1
                atomic_write_bytes(label_path, png_bytes(label))
                atomic_write_bytes(image_path, png_bytes(np.ascontiguousarray(image)))
            count += 1
            self._report("gather", count / c.num_frames, step=count, total_steps=c.num_frames,
                         message=f"gathered {count} frames")  # fmt: skip
        if count == 0:
            raise ValueError(f"no frames from source {c.source!r}")
        return {"frames": count, "pseudo_labelled": pseudo_labelled}

    def _pseudo_labeller(self) -> Callable[[np.ndarray], np.ndarray]:
        base = resolve_base_choice(self.config.base_model)
        if base is None:
            raise ValueError(
                "frames without labels need base_model (shipped or a segmentation model directory) for "
                "pseudo-labels; set base_model, or use labelled frames (Cityscapes layout or source=scenes)"
            )
        from flow_anomaly_ros.runtime.preprocess import resize_map
        from flow_anomaly_ros.runtime.torch_backend import TorchBackend

        backend = TorchBackend.from_path(base)
        k = backend.spec.num_inlier_classes

        def label(image: np.ndarray) -> np.ndarray:
            # arg-max over the inlier classes at the network size, brought to the frame's size (the base model may
            # have an input_size): labels must match the frames they label
            logits = backend.infer(image)[:, :k]
            return resize_map(logits.argmax(1).astype(np.uint8), image.shape[:2], nearest=True)[0]

        return label

    def _gathered_images(self) -> list[np.ndarray]:
        from flow_anomaly_ros.synthesis.patches import iter_image_dir

        root = self.work / "dataset" / "leftImg8bit"
        return [img for _, img in iter_image_dir(root)]

    def _stage_maf_train(self) -> dict[str, Any]:
        from flow_anomaly_ros.flows.maf import MAFConfig
        from flow_anomaly_ros.synthesis.patch_flow import train_patch_flow
        from flow_anomaly_ros.synthesis.patches import extract_patches

        c = self.config
        rng = np.random.default_rng(c.seed)
        patches = extract_patches(self._gathered_images(), c.patch_size, c.patches_per_frame, rng, c.patch_scale)
        config = MAFConfig(c.patch_size**2 * 3, c.maf_transforms, c.maf_hidden, c.maf_blocks, seed=c.seed)

        def callback(p) -> bool:
            self._report("maf_train", p.step / p.total_steps, step=p.step, total_steps=p.total_steps, loss=p.loss,
                         message=f"MAF NLL {p.loss:.2f}")  # fmt: skip
            return self._stop.is_set()

        pf = train_patch_flow(
            patches, config, c.maf_steps, c.maf_lr, c.maf_batch_size, checkpoint_dir=self.work / "maf_checkpoint",
            checkpoint_every=c.maf_checkpoint_every, seed=c.seed, callback=callback,
        )  # fmt: skip
        self._check_stop()  # stopped inside fit: the checkpoint is written, the stage is not done
        pf.save(
            self.work / "maf", {"training_data": {"frames_dir": str(self.work / "dataset"), "patches": len(patches)}}
        )
        return {"patches": len(patches), **pf.info}

    def _stage_synthesis(self) -> dict[str, Any]:
        from flow_anomaly_ros.synthesis.dataset_writer import CityscapesWriter
        from flow_anomaly_ros.synthesis.figures import figure_pasting, figure_patches
        from flow_anomaly_ros.synthesis.paste import paste_patches
        from flow_anomaly_ros.synthesis.patch_flow import PatchFlow
        from flow_anomaly_ros.synthesis.sampling import LowLikelihoodSampler, SamplerConfig

        c = self.config
        pf = PatchFlow.load(self.work / "maf")
        sampler = LowLikelihoodSampler(pf, SamplerConfig(c.sampling_mode, c.temperature, c.low_quantile,
                                                         c.high_quantile))  # fmt: skip
        rng = np.random.default_rng([c.seed, 1])
        chunks = []
        done = 0
        while done < c.num_negatives:
            self._check_stop()
            m = min(1024, c.num_negatives - done)
            chunks.append(sampler(m, rng))
            done += m
            self._report("synthesis", 0.8 * done / c.num_negatives, step=done, total_steps=c.num_negatives,
                         message=f"sampled {done} patches, acceptance {sampler.total.acceptance_rate:.3f}")  # fmt: skip
        negatives = np.concatenate(chunks)
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, patches=negatives)
        atomic_write_bytes(self.work / "negatives.npz", buf.getvalue())
        from flow_anomaly_ros.data.cityscapes import CityscapesDataset

        data = CityscapesDataset(self.work / "dataset", split="train")
        writer = CityscapesWriter(self.work / "synthetic", split="train", settings={"seed": c.seed})
        before, after, masks = [], [], []
        for i in range(min(c.synthetic_examples, len(data))):
            image, label = data[i]
            prng = np.random.default_rng([c.seed, 2, i])
            patches = negatives[prng.integers(0, len(negatives), c.patches_per_image)]
            out, lbl, mask, boxes = paste_patches(image, label, patches, prng, return_boxes=True)
            writer.write(f"example_{i:06d}", out, lbl, mask, extra={"boxes": [vars(b) for b in boxes]})
            if i < 3:
                before.append(image)
                after.append(out)
                masks.append(mask)
        writer.done({"sampling": sampler.total.as_dict()})
        untrained = LowLikelihoodSampler(PatchFlow(_fresh_flow(pf), pf.config, pf.codec), SamplerConfig("any", 1.0))
        trained = LowLikelihoodSampler(pf, SamplerConfig("any", 1.0))
        figure_patches(
            [("untrained MAF", untrained(64, rng)), ("trained MAF", trained(64, rng)),
             (f"negatives ({c.sampling_mode}, T={c.temperature:g})", negatives[:64])],
            self.work / "figures" / "figure9_maf_patches.png",
        )  # fmt: skip
        if before:
            figure_pasting(before, after, masks, self.work / "figures" / "figure10_pasting.png")
        return {"negatives": len(negatives), "sampling": sampler.total.as_dict()}

    def _finetune_config(self):
        from flow_anomaly_ros.segmentation.config import FinetuneConfig

        c = self.config
        backbone = c.backbone
        base = resolve_base_choice(c.base_model)
        if base is not None:
            from flow_anomaly_ros.model_store import read_manifest

            backbone = read_manifest(base).get("backbone", backbone)
        return FinetuneConfig.from_dict(
            {
                "model": {"backbone": backbone, "weights": str(base) if base else None,
                          "input_size": [c.crop_height, c.crop_width]},
                "data": {"source": "cityscapes", "root": str(self.work / "dataset"), "split": "train",
                         "crop": [c.crop_height, c.crop_width], "seed": c.seed},
                "patches": {"source": "npz", "path": str(self.work / "negatives.npz"), "patch_size": c.patch_size,
                            "per_image": c.patches_per_image},
                "train": {"steps": c.finetune_steps, "batch_size": c.batch_size, "lr": c.lr, "seed": c.seed,
                          "threads": c.threads, "freeze_bn": base is not None},
                "validation": {"every": c.finetune_steps, "num_images": 2, "size": [c.crop_height, c.crop_width]},
                "output": {"dir": str(self.work / "finetune"), "checkpoint_every": c.finetune_checkpoint_every,
                           "resume": True},
            }
        )  # fmt: skip

    def _stage_finetune(self) -> dict[str, Any]:
        from flow_anomaly_ros.segmentation.finetune import finetune
        from flow_anomaly_ros.segmentation.patch_sources import make_patch_source

        cfg = self._finetune_config()
        inner = make_patch_source(cfg.patches)
        total = cfg.train.steps
        ckpt = self.work / "finetune" / "checkpoint" / "manifest.json"
        step = json.loads(ckpt.read_text()).get("step", 0) if ckpt.is_file() else 0
        counter = {"step": step}

        def source(n: int, rng: np.random.Generator) -> np.ndarray:
            # called once per fine-tuning step: the place to honour stop requests and report progress
            self._check_stop()
            counter["step"] += 1
            self._report("finetune", counter["step"] / total, step=counter["step"], total_steps=total,
                         message=f"fine-tuning step {counter['step']}/{total}")  # fmt: skip
            return inner(n, rng)

        result = finetune(cfg, progress=False, patch_source=source)
        last = result.history[-1] if result.history else {}
        return {"model_dir": str(result.model_dir), "steps": result.steps, "resumed_from": result.resumed_from,
                "final_metrics": last}  # fmt: skip

    def _stage_export(self) -> dict[str, Any]:
        if not self.config.export_onnx:
            return {"skipped": "export_onnx is false"}
        from flow_anomaly_ros.runtime.export import export_onnx

        c = self.config
        path = export_onnx(self.work / "finetune" / "model", sample_size=(c.crop_height, c.crop_width))
        return {"onnx": str(path)}

    def _stage_engine(self) -> dict[str, Any]:
        if not self.config.build_engine or not self.config.export_onnx:
            return {"skipped": "build_engine is false"}
        if importlib.util.find_spec("tensorrt") is None:
            return {"skipped": "TensorRT is not importable on this machine; build the engine on the target (the "
                               "camera node does it on first start, or `flow-anomaly seg build-engine`)"}  # fmt: skip
        from flow_anomaly_ros.runtime.loader import load_backend

        backend = load_backend("tensorrt", self.work / "finetune" / "model", device="cuda",
                               precision=self.config.engine_precision)  # fmt: skip
        return {"engine": backend.name, "precision": self.config.engine_precision}


def _fresh_flow(pf):
    from flow_anomaly_ros.flows.maf import build_maf

    flow = build_maf(pf.config)
    flow.eval()
    return flow
