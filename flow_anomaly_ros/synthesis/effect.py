"""The effect experiment: do MAF negatives teach DeepLabV3 to find anomalies it never saw?

Protocol (issue item 7; the fine-tuning the paper could not finish, Hu & Kathula 2024 §5):

1. **Shared base**: a mobilenet-v3 DeepLabV3 is trained from scratch on anomaly-free procedural street scenes
   (:mod:`flow_anomaly_ros.data.street_scenes`) with the inlier cross-entropy only. All arms start from this checkpoint.
2. **Patch MAF** (pre-train schedule): trained by NLL on 8×8 patches of the same training scenes; negatives are
   sampled from its low-likelihood region (``outside`` the 1 % inlier quantile at temperature 1.5 by default).
3. **Arms**, each fine-tuned for the same number of steps with the same seed, batches and loss
   (:func:`flow_anomaly_ros.segmentation.finetune.finetune`):

   - ``no_negatives``: no pasting (inlier CE only), scored by max-softmax (baseline a);
   - ``noise``: uniform-noise patches pasted as class 19, scored by the anomaly-class probability (baseline b);
   - ``maf``: MAF low-likelihood patches pasted as class 19, scored by the anomaly-class probability;
   - ``maf_joint`` (optional): the joint schedule, the MAF trained alongside from random weights
     (:class:`~flow_anomaly_ros.synthesis.joint.JointMAFSource`).

4. **Test**: scenes with anomalous objects (crates, cones, animals, debris, balls), kinds that never occur in the
   training scenes. Pixel AP, FPR at 95 % TPR and AUROC of the anomaly score
   (:mod:`flow_anomaly_ros.evaluation.pixel_metrics`), and inlier mIoU (arg-max over all classes, so anomaly
   predictions on inlier pixels count as errors).

Every stage is cached in ``OUT`` (atomic model directories, resumable checkpoints): rerunning the command after a kill
continues where it stopped, and rerunning a finished one rewrites the same table.

Example::

    flow-anomaly maf effect --out runs/effect            # ~20 min on 2 idle cores
    flow-anomaly maf effect --out /tmp/e --quick         # a minute; the numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError, atomic_write_json, atomic_write_text, read_manifest
from flow_anomaly_ros.synthesis.sampling_defaults import (
    DEFAULT_HIGH_QUANTILE,
    DEFAULT_LOW_QUANTILE,
    DEFAULT_TEMPERATURE,
)

ARMS = ("no_negatives", "noise", "maf", "maf_joint")
DEFAULT_ARMS = ("no_negatives", "noise", "maf")
ARM_SCORE = {"no_negatives": "max_softmax", "noise": "anomaly_prob", "maf": "anomaly_prob", "maf_joint": "anomaly_prob"}
REPORT_METHODS = ("anomaly_prob", "max_softmax", "energy")
EVAL_SEEDS = {"test": 1_000_003, "validation": 2_000_003}  # offsets from the seed: disjoint scene sets
MAX_MIOU_DROP = 2.0  # the acceptance: inlier mIoU not worse by more than 2 points


@dataclass
class EffectConfig:
    """Sizes of the experiment; the defaults take about 20 minutes on 2 idle CPU cores."""

    out: str
    size: tuple[int, int] = (96, 192)  # train crops and test scenes (H, W)
    train_scenes: int = 300
    test_scenes: int = 40
    batch_size: int = 8
    base_steps: int = 400
    base_lr: float = 0.02
    finetune_steps: int = 300  # with anomaly_weight 0.1: chosen on validation scenes (docs/synthesis.md)
    finetune_lr: float = 0.005
    anomaly_weight: float = 0.1  # weight of the anomaly-class CE on pasted pixels (inlier CE has weight 1)
    patch_probability: float = 1.0  # fraction of training images that get pasted negatives
    patches_per_image: int = 2
    patch_size: int = 8
    maf_patches_per_scene: int = 64
    maf_steps: int = 1000
    maf_transforms: int = 4
    maf_hidden: int = 128
    maf_lr: float = 1e-3
    sampling_mode: str = "outside"
    temperature: float = DEFAULT_TEMPERATURE
    low_quantile: float = DEFAULT_LOW_QUANTILE
    high_quantile: float = DEFAULT_HIGH_QUANTILE
    pool_size: int = 1024
    arms: tuple[str, ...] = DEFAULT_ARMS
    seed: int = 0
    threads: int = 2
    progress: bool = True
    eval_on: str = "test"  # test | validation (other scenes, for choosing settings without touching the test set)

    @classmethod
    def quick(cls, out: str, **overrides: Any) -> EffectConfig:
        """Tiny sizes for tests and smoke runs (minutes → seconds; the numbers are not meaningful)."""
        values: dict[str, Any] = dict(
            size=(64, 128),
            train_scenes=12,
            test_scenes=3,
            batch_size=2,
            base_steps=3,
            finetune_steps=2,
            maf_patches_per_scene=16,
            maf_steps=15,
            maf_transforms=2,
            maf_hidden=32,
            pool_size=16,
            progress=False,
        )
        values.update(overrides)
        return cls(out=out, **values)

    def validate(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {list(self.arms)}")
        if self.eval_on not in EVAL_SEEDS:
            raise ValueError(f"eval_on must be one of {sorted(EVAL_SEEDS)}, got {self.eval_on!r}")
        if not 0.0 < self.patch_probability <= 1.0 or self.anomaly_weight < 0:
            raise ValueError("patch_probability must be in (0, 1] and anomaly_weight >= 0")
        if min(self.size) < 32:
            raise ValueError(f"size must be at least 32x32, got {self.size}")
        for name in ("train_scenes", "test_scenes", "batch_size", "base_steps", "finetune_steps", "maf_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ArmResult:
    arm: str
    score_method: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> ap/fpr95/auroc
    miou: float = float("nan")
    train_seconds: float = 0.0
    sampling: dict[str, float] | None = None


def _finetune_config(cfg: EffectConfig, out_dir: Path, steps: int, lr: float, weights: str | None,
                     probability: float, freeze_bn: bool, anomaly_weight: float = 1.0):  # fmt: skip
    from flow_anomaly_ros.segmentation.config import FinetuneConfig

    h, w = cfg.size
    return FinetuneConfig.from_dict(
        {
            "model": {"backbone": "mobilenet_v3_large", "weights": weights, "input_size": [h, w]},
            "data": {"source": "street_scenes", "crop": [h, w], "num_scenes": cfg.train_scenes, "seed": cfg.seed},
            "patches": {
                "source": "noise",  # replaced by the arm's patch_source
                "patch_size": cfg.patch_size,
                "per_image": cfg.patches_per_image,
                "probability": probability,
                "blend": "soft",
                "ignore_border": True,
            },
            "loss": {"anomaly_weight": anomaly_weight},
            "train": {
                "steps": steps,
                "batch_size": cfg.batch_size,
                "optimizer": "sgd",
                "lr": lr,
                "freeze_bn": freeze_bn,
                "device": "cpu",
                "seed": cfg.seed,
                "threads": cfg.threads,
            },
            "validation": {"every": steps, "num_images": 1, "size": [h, w], "seed": cfg.seed + 7_000},
            "output": {"dir": str(out_dir), "checkpoint_every": max(25, steps // 8), "resume": True},
        }
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _arm_settings(cfg: EffectConfig, arm: str) -> dict[str, Any]:
    """What an arm's fine-tuning depends on (besides the shared base); a cached arm with other settings is redone."""
    keys = ("size", "train_scenes", "batch_size", "finetune_steps", "finetune_lr", "seed", "patch_size")
    out: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    out["size"] = list(cfg.size)
    if arm != "no_negatives":
        out.update(anomaly_weight=cfg.anomaly_weight, patch_probability=cfg.patch_probability,
                   patches_per_image=cfg.patches_per_image)  # fmt: skip
    if arm.startswith("maf"):
        out.update(sampling_mode=cfg.sampling_mode, temperature=cfg.temperature, low_quantile=cfg.low_quantile,
                   high_quantile=cfg.high_quantile, pool_size=cfg.pool_size, maf_steps=cfg.maf_steps)  # fmt: skip
    return out


def _finished(run_dir: Path, steps: int) -> bool:
    try:
        data = json.loads((run_dir / "metrics.json").read_text())
        read_manifest(run_dir / "model")
    except (OSError, ValueError, ModelFileError):
        return False
    return int(data.get("steps", -1)) >= steps


def _train_base(cfg: EffectConfig, out: Path, log) -> Path:
    from flow_anomaly_ros.segmentation.finetune import finetune

    run = out / "base"
    if not _finished(run, cfg.base_steps):
        log(f"[effect] base: {cfg.base_steps} steps of inlier-only training from scratch")
        ft = _finetune_config(cfg, run, cfg.base_steps, cfg.base_lr, None, probability=0.0, freeze_bn=False)
        finetune(ft, progress=cfg.progress)
    return run / "model"


def _train_maf(cfg: EffectConfig, out: Path, log):
    from flow_anomaly_ros.flows.maf import MAFConfig
    from flow_anomaly_ros.synthesis.patch_flow import PatchFlow, train_patch_flow

    path = out / "maf"
    try:
        return PatchFlow.load(path)
    except ModelFileError:
        pass
    log(f"[effect] MAF: {cfg.maf_steps} NLL steps on {cfg.patch_size}x{cfg.patch_size} inlier patches")
    patches = inlier_patches(cfg)
    config = MAFConfig(cfg.patch_size**2 * 3, cfg.maf_transforms, cfg.maf_hidden, seed=cfg.seed)
    pf = train_patch_flow(
        patches, config, cfg.maf_steps, cfg.maf_lr, checkpoint_dir=out / "maf_checkpoint", seed=cfg.seed,
        progress=cfg.progress,
    )  # fmt: skip
    pf.save(path, {"training_data": {"street_scenes": cfg.train_scenes, "patches": len(patches)}})
    return pf


def inlier_patches(cfg: EffectConfig) -> np.ndarray:
    """Patches of the training scenes (the same scenes the segmentation net trains on)."""
    from flow_anomaly_ros.synthesis.patches import extract_patches
    from flow_anomaly_ros.synthesis.sources import frames_from_scenes

    frames = (f[1] for f in frames_from_scenes(cfg.train_scenes, *cfg.size, seed=cfg.seed))
    return extract_patches(frames, cfg.patch_size, cfg.maf_patches_per_scene, np.random.default_rng(cfg.seed))


def _sampler_config(cfg: EffectConfig):
    from flow_anomaly_ros.synthesis.sampling import SamplerConfig

    return SamplerConfig(
        mode=cfg.sampling_mode,
        temperature=cfg.temperature,
        low_quantile=cfg.low_quantile,
        high_quantile=cfg.high_quantile,
    )


def _patch_source(cfg: EffectConfig, arm: str, out: Path, log):
    from flow_anomaly_ros.synthesis.sampling import LowLikelihoodSampler, PatchPool, uniform_noise_source

    if arm == "no_negatives":
        return uniform_noise_source(cfg.patch_size), None  # never called: probability 0
    if arm == "noise":
        return uniform_noise_source(cfg.patch_size), None
    if arm == "maf":
        sampler = LowLikelihoodSampler(_train_maf(cfg, out, log), _sampler_config(cfg))
        return PatchPool(sampler, size=cfg.pool_size, refresh_every=cfg.pool_size * 2), sampler
    from flow_anomaly_ros.synthesis.joint import JointMAFSource

    joint = JointMAFSource.create(
        inlier_patches(cfg),
        _maf_config_for(cfg),
        _sampler_config(cfg),
        maf_steps_per_call=max(1, cfg.maf_steps // max(1, cfg.finetune_steps)),
        lr=cfg.maf_lr,
        seed=cfg.seed,
    )
    return joint, joint.sampler


def _maf_config_for(cfg: EffectConfig):
    from flow_anomaly_ros.flows.maf import MAFConfig

    return MAFConfig(cfg.patch_size**2 * 3, cfg.maf_transforms, cfg.maf_hidden, seed=cfg.seed)


def test_scenes(cfg: EffectConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, trainId label with 19 on anomalies, anomaly mask) of the held-out test scenes (all with anomalies)."""
    from flow_anomaly_ros.data.street_scenes import StreetSceneDataset

    ds = StreetSceneDataset(cfg.test_scenes, *cfg.size, seed=cfg.seed + EVAL_SEEDS[cfg.eval_on], anomaly_fraction=1.0)
    return [(s.image, s.label, s.anomaly_mask) for s in ds]


def evaluate_arm(model_dir: Path, scenes, methods=REPORT_METHODS) -> tuple[dict[str, dict[str, float]], float]:
    """Anomaly metrics per score method and inlier mIoU of one model on the test scenes (one inference per image)."""
    from flow_anomaly_ros.evaluation.pixel_metrics import AnomalyPixelAccumulator, ConfusionMatrix
    from flow_anomaly_ros.runtime.torch_backend import TorchBackend
    from flow_anomaly_ros.segmentation.scores import score_map

    backend = TorchBackend.from_path(model_dir)
    confusion = ConfusionMatrix(19)
    accs = {m: AnomalyPixelAccumulator() for m in methods}
    for image, label, mask in scenes:
        logits = backend.infer(image)
        confusion.update(logits.argmax(1)[0], label)
        ood = mask.astype(np.uint8)
        for m in methods:
            accs[m].update(score_map(logits, m)[0], ood)
    metrics = {
        m: {k: float(v) for k, v in a.compute().items() if k in ("ap", "fpr95", "auroc")} for m, a in accs.items()
    }
    return metrics, float(confusion.miou())


def run_effect(cfg: EffectConfig, log=print) -> dict[str, Any]:
    """Run (or resume) the whole experiment; writes ``effect.json`` and ``effect.md`` in ``cfg.out``."""
    import torch

    from flow_anomaly_ros.segmentation.finetune import finetune

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    base = _train_base(cfg, out, log)
    timings["base"] = time.perf_counter() - t
    scenes = test_scenes(cfg)
    results: list[ArmResult] = []
    for arm in cfg.arms:
        run = out / "arms" / arm
        t = time.perf_counter()
        source, sampler = _patch_source(cfg, arm, out, log)
        settings = _arm_settings(cfg, arm)
        if _finished(run, cfg.finetune_steps) and _read_json(run / "arm_settings.json") != settings:
            log(f"[effect] arm {arm}: settings changed since the cached run; training it again")
            shutil.rmtree(run)
        if not _finished(run, cfg.finetune_steps):
            log(f"[effect] arm {arm}: {cfg.finetune_steps} fine-tuning steps from the shared base")
            if run.exists() and _read_json(run / "arm_settings.json") != settings:
                shutil.rmtree(run)  # a checkpoint of other settings must not be resumed
            run.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run / "arm_settings.json", settings)
            prob = 0.0 if arm == "no_negatives" else cfg.patch_probability
            ft = _finetune_config(cfg, run, cfg.finetune_steps, cfg.finetune_lr, str(base), prob, freeze_bn=True,
                                  anomaly_weight=cfg.anomaly_weight)  # fmt: skip
            finetune(ft, progress=cfg.progress, patch_source=source)
        timings[arm] = time.perf_counter() - t
        metrics, miou = evaluate_arm(run / "model", scenes)
        stats = sampler.total.as_dict() if sampler is not None and sampler.total.proposed else None
        results.append(ArmResult(arm, ARM_SCORE[arm], metrics, miou, timings[arm], stats))
        log(f"[effect] {arm}: {json.dumps(metrics[ARM_SCORE[arm]])} mIoU {miou:.3f}")
    report = {
        "config": asdict(cfg),
        "arms": [asdict(r) for r in results],
        "verdict": verdict(results),
        "seconds": time.perf_counter() - t_start,
        "timings_s": timings,
        "base_model": str(base),
    }
    atomic_write_json(out / "effect.json", report)
    atomic_write_text(out / "effect.md", format_table(results, report))
    return report


def verdict(results: list[ArmResult]) -> dict[str, Any]:
    """Does ``maf`` beat the baselines on AP and FPR95 with mIoU within 2 points of ``no_negatives``?"""
    by = {r.arm: r for r in results}
    if "maf" not in by:
        return {"checked": False}
    maf = by["maf"].metrics[ARM_SCORE["maf"]]
    checks: dict[str, bool] = {}
    for base in ("no_negatives", "noise"):
        if base in by:
            other = by[base].metrics[ARM_SCORE[base]]
            checks[f"ap_beats_{base}"] = maf["ap"] > other["ap"]
            checks[f"fpr95_beats_{base}"] = maf["fpr95"] < other["fpr95"]
    if "no_negatives" in by:
        checks["miou_within_2_points"] = 100 * (by["no_negatives"].miou - by["maf"].miou) <= MAX_MIOU_DROP
    return {"checked": True, "all": all(checks.values()), **checks}


def format_table(results: list[ArmResult], report: dict[str, Any]) -> str:
    """The Markdown table of ``docs/synthesis.md``."""
    names = {
        "no_negatives": "(a) no negatives, max-softmax",
        "noise": "(b) uniform-noise patches",
        "maf": "MAF negatives (pre-trained MAF)",
        "maf_joint": "MAF negatives (joint schedule)",
    }
    cfg = report["config"]
    lines = [
        f"Street scenes {cfg['size'][0]}x{cfg['size'][1]}, {cfg['train_scenes']} training scenes (no anomalies), "
        f"{cfg['test_scenes']} {cfg.get('eval_on', 'test')} scenes with unseen anomalous objects; mobilenet-v3 "
        f"DeepLabV3, shared base ({cfg['base_steps']} steps), {cfg['finetune_steps']} fine-tuning steps per arm "
        f"(lr {cfg['finetune_lr']:g}), negatives: {cfg['patches_per_image']} per image in "
        f"{100 * cfg.get('patch_probability', 1.0):.0f} % of the images, anomaly-loss weight "
        f"{cfg.get('anomaly_weight', 1.0):g}; seed {cfg['seed']}.",
        "",
        "| arm | score | AP ↑ | FPR95 ↓ | AUROC ↑ | inlier mIoU ↑ | arm time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r.metrics[r.score_method]
        lines.append(
            f"| {names[r.arm]} | {r.score_method} | {m['ap']:.3f} | {m['fpr95']:.3f} | {m['auroc']:.3f} | "
            f"{100 * r.miou:.1f} | {r.train_seconds:.0f} s |"
        )
    lines += ["", "All score methods per arm (AP / FPR95):", ""]
    lines.append("| arm | " + " | ".join(REPORT_METHODS) + " |")
    lines.append("|---|" + "---|" * len(REPORT_METHODS))
    for r in results:
        cells = [f"{r.metrics[m]['ap']:.3f} / {r.metrics[m]['fpr95']:.3f}" for m in REPORT_METHODS]
        lines.append(f"| {r.arm} | " + " | ".join(cells) + " |")
    for r in results:
        if r.sampling:
            s = r.sampling
            lines.append(
                f"\n{r.arm} sampling: {s['proposed']} MAF proposals, acceptance {s['acceptance_rate']:.3f}, "
                f"{s['samples_per_s']:.0f} samples/s, fallback {s['fallback']}."
            )
    v = report["verdict"]
    if v.get("checked"):
        flags = ", ".join(f"{k}={'yes' if ok else 'NO'}" for k, ok in v.items() if k not in ("checked", "all"))
        lines.append(f"\nVerdict: {'MAF negatives win' if v['all'] else 'NOT all criteria met'} ({flags}).")
    lines.append(f"\nTotal wall time {report['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def _cmd_effect(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.cli import UserError

    overrides: dict[str, Any] = {"seed": args.seed, "threads": args.threads, "progress": not args.quiet}
    if args.arms:
        overrides["arms"] = tuple(args.arms)
    if args.validation:
        overrides["eval_on"] = "validation"
    for name in ("base_steps", "finetune_steps", "maf_steps", "train_scenes", "test_scenes", "temperature",
                 "anomaly_weight", "patch_probability", "finetune_lr", "patches_per_image"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.size is not None:
        overrides["size"] = args.size
    cfg = EffectConfig.quick(args.out, **overrides) if args.quick else EffectConfig(out=args.out, **overrides)
    try:
        report = run_effect(cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print((Path(args.out) / "effect.md").read_text())
    return 0 if report["verdict"].get("all", True) or args.quick else 1


def register_effect(verbs: argparse._SubParsersAction, common) -> None:
    from flow_anomaly_ros.synthesis.cli import _size

    p = verbs.add_parser(
        "effect",
        help="reproduce the effect table: MAF negatives vs max-softmax vs noise patches (~35 min on 2 cores)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", required=True, metavar="DIR", help="work and result directory (resumable cache)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers are meaningless)")
    p.add_argument("--arms", nargs="+", choices=ARMS, help=f"arms to run (default {' '.join(DEFAULT_ARMS)})")
    p.add_argument("--size", type=_size, metavar="HxW", help="scene and crop size (default 96x192)")
    p.add_argument("--base-steps", type=int, help="shared base training steps (default 400)")
    p.add_argument("--finetune-steps", type=int, help="fine-tuning steps per arm (default 300)")
    p.add_argument("--maf-steps", type=int, help="MAF NLL steps (default 1000)")
    p.add_argument("--train-scenes", type=int, help="training scenes (default 300)")
    p.add_argument("--test-scenes", type=int, help="test scenes with anomalies (default 40)")
    p.add_argument("--temperature", type=float, help="MAF sampling temperature (default 1.5)")
    p.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate (default 0.005)")
    p.add_argument("--anomaly-weight", type=float, help="weight of the anomaly CE on pasted pixels (default 0.1)")
    p.add_argument("--patch-probability", type=float, help="fraction of images with negatives (default 1.0)")
    p.add_argument("--patches-per-image", type=int, help="negatives per image (default 2)")
    p.add_argument("--validation", action="store_true",
                   help="evaluate on validation scenes (other seeds) instead of the test scenes: for choosing "
                        "settings without looking at the test set")  # fmt: skip
    common(p)
    p.set_defaults(func=_cmd_effect)
