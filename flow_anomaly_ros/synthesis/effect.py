"""The effect experiment: do MAF negatives teach DeepLabV3 to find anomalies it never saw?

Protocol (the fine-tuning the paper could not finish, Hu & Kathula 2024 §5):

1. **Shared base**: the shipped ``models/seg_base_mobilenet`` (a mobilenet-v3 DeepLabV3 trained on anomaly-free
   procedural street scenes, see ``models/README.md``); ``--base scratch`` trains a small one here instead.
2. **Patch MAF** per seed (pre-train schedule): NLL on 8×8 patches of the training scenes; negatives are sampled
   from its low-likelihood region (``outside`` the 1 % inlier quantile at temperature 1.5 by default).
3. **Arms**, each fine-tuned from the base for the same steps, batches and loss, once per seed
   (:func:`flow_anomaly_ros.segmentation.finetune.finetune`):

   - ``no_negatives``: no pasting (inlier CE only), scored by max-softmax, max-logit and energy (baselines a);
   - ``noise``: uniform-noise patches pasted as class 19, scored by the anomaly-class probability (baseline b);
   - ``maf``: MAF low-likelihood patches pasted as class 19, scored by the anomaly-class probability and by the
     DenseHybrid-style score (baseline c: anomaly posterior combined with the unnormalised inlier density);
   - ``maf_joint`` (optional): the joint schedule, the MAF trained alongside from random weights.

4. **Test**: scenes with anomalous objects, one kind per scene over every kind: the ordinary ones (crates, cones,
   animals, debris, balls) and three held-out kinds that nothing else contains (tire, barrel, and the low-contrast
   rock). Pixel AP, FPR at 95 % TPR and AUROC (:mod:`flow_anomaly_ros.evaluation.pixel_metrics`), inlier mIoU
   (arg-max over all classes), AP per kind; mean ± std over the seeds. The test set is the same for every seed, so
   the spread is the training's.

Every stage is cached in ``OUT`` (atomic model directories, resumable checkpoints): rerunning the command after a kill
continues where it stopped, and rerunning a finished one rewrites the same table. The demo's camera model is this
experiment's ``maf`` arm (:mod:`flow_anomaly_ros.demo.training`), so the demo and the table share one code path.

Example::

    flow-anomaly maf effect --out runs/effect            # 3 seeds; wall time in docs/synthesis.md
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
REPORT_METHODS = ("anomaly_prob", "max_softmax", "max_logit", "energy", "densehybrid")
# The rows of the table: (arm, score method). (a) closed-set scores of the net without negatives, (b) noise patches,
# (c) the DenseHybrid-style score of the MAF-trained net, then the paper's anomaly-class probability.
TABLE_ROWS = (
    ("no_negatives", "max_softmax", "(a) no negatives, max-softmax"),
    ("no_negatives", "max_logit", "(a) no negatives, max-logit"),
    ("no_negatives", "energy", "(a) no negatives, energy"),
    ("noise", "anomaly_prob", "(b) uniform-noise patches"),
    ("maf", "densehybrid", "(c) MAF negatives, DenseHybrid score"),
    ("maf", "anomaly_prob", "MAF negatives, anomaly-class probability"),
    ("maf_joint", "anomaly_prob", "MAF negatives (joint schedule)"),
)
EVAL_SEEDS = {"test": 1_000_003, "validation": 2_000_003}  # offsets: disjoint scene sets (test set fixed over seeds)
MAX_MIOU_DROP = 2.0  # the acceptance: inlier mIoU not worse by more than 2 points
SCRATCH = "scratch"
SHIPPED = "shipped"


@dataclass
class EffectConfig:
    """Sizes of the experiment (defaults: the shipped base, 3 seeds; wall time in docs/synthesis.md)."""

    out: str
    size: tuple[int, int] = (256, 512)  # test scenes (H, W); training scenes are drawn around this size
    crop: tuple[int, int] | None = (192, 384)  # fine-tuning crops; None = size
    base: str = SHIPPED  # shipped (models/seg_base_mobilenet) | scratch | a model directory
    train_scenes: int = 2000
    test_scenes: int = 48  # spread evenly over every anomaly kind, the held-out ones included
    batch_size: int = 4
    base_steps: int = 400  # only for base: scratch
    base_lr: float = 0.02
    finetune_steps: int = 300
    finetune_lr: float = 0.005
    grad_clip: float | None = 2.0  # the confident base starts with anomaly CE ~11 on pasted pixels: keep steps sane
    anomaly_weight: float = 0.1  # weight of the anomaly-class CE on pasted pixels (inlier CE has weight 1)
    patch_probability: float = 1.0  # fraction of training images that get pasted negatives
    patches_per_image: int = 2
    patch_size: int = 8
    augment: bool = True  # the base training's scale / colour augmentation during fine-tuning too
    maf_patches_per_scene: int = 64
    maf_scenes: int = 300  # scenes whose patches train the MAF
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
    seed: int = 0  # first seed; seeds are seed, seed+1, ...
    num_seeds: int = 3
    threads: int = 2
    progress: bool = True
    eval_on: str = "test"  # test | validation (other scenes, for choosing settings without touching the test set)

    @classmethod
    def quick(cls, out: str, **overrides: Any) -> EffectConfig:
        """Tiny sizes for tests and smoke runs (minutes → seconds; the numbers are not meaningful)."""
        values: dict[str, Any] = dict(
            size=(64, 128),
            crop=None,
            base=SCRATCH,
            train_scenes=12,
            test_scenes=3,
            batch_size=2,
            base_steps=3,
            finetune_steps=2,
            maf_patches_per_scene=16,
            maf_scenes=12,
            maf_steps=15,
            maf_transforms=2,
            maf_hidden=32,
            pool_size=16,
            num_seeds=1,
            progress=False,
        )
        values.update(overrides)
        return cls(out=out, **values)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.num_seeds)]

    def validate(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {list(self.arms)}")
        if self.eval_on not in EVAL_SEEDS:
            raise ValueError(f"eval_on must be one of {sorted(EVAL_SEEDS)}, got {self.eval_on!r}")
        if not 0.0 < self.patch_probability <= 1.0 or self.anomaly_weight < 0:
            raise ValueError("patch_probability must be in (0, 1] and anomaly_weight >= 0")
        if min(self.size) < 32 or (self.crop is not None and min(self.crop) < 32):
            raise ValueError(f"size and crop must be at least 32x32, got {self.size} / {self.crop}")
        for name in ("train_scenes", "test_scenes", "batch_size", "base_steps", "finetune_steps", "maf_steps",
                     "num_seeds", "maf_scenes"):  # fmt: skip
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
    per_kind_ap: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> kind -> AP
    seed: int = 0


def finetune_config(cfg: EffectConfig, out_dir: Path, steps: int, lr: float, weights: str | None,
                    probability: float, freeze_bn: bool, anomaly_weight: float = 1.0,
                    seed: int | None = None):  # fmt: skip
    """The fine-tuning config of one arm (also the demo's camera model: ``demo.training``)."""
    from flow_anomaly_ros.segmentation.config import FinetuneConfig

    seed = cfg.seed if seed is None else seed
    h, w = cfg.size
    ch, cw = cfg.crop or cfg.size
    data: dict[str, Any] = {"source": "street_scenes", "crop": [ch, cw], "num_scenes": cfg.train_scenes,
                            "seed": seed}  # fmt: skip
    if cfg.augment:
        data.update(scene_size=[h, w], scale=[0.75, 1.5], color_jitter=0.3)
    return FinetuneConfig.from_dict(
        {
            "model": {"backbone": "mobilenet_v3_large", "weights": weights},
            "data": data,
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
                "seed": seed,
                "threads": cfg.threads,
                "grad_clip": cfg.grad_clip,
            },
            "validation": {"every": steps, "num_images": 1, "size": [h, w], "seed": seed + 7_000},
            "output": {"dir": str(out_dir), "checkpoint_every": max(25, steps // 8), "resume": True},
        }
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _arm_settings(cfg: EffectConfig, arm: str, seed: int, base: Path) -> dict[str, Any]:
    """What an arm's fine-tuning depends on; a cached arm with other settings is redone."""
    keys = ("train_scenes", "batch_size", "finetune_steps", "finetune_lr", "patch_size", "augment", "grad_clip")
    out: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    out.update(size=list(cfg.size), crop=list(cfg.crop or cfg.size), seed=seed, base=_base_identity(base))
    if arm != "no_negatives":
        out.update(anomaly_weight=cfg.anomaly_weight, patch_probability=cfg.patch_probability,
                   patches_per_image=cfg.patches_per_image)  # fmt: skip
    if arm.startswith("maf"):
        out.update(sampling_mode=cfg.sampling_mode, temperature=cfg.temperature, low_quantile=cfg.low_quantile,
                   high_quantile=cfg.high_quantile, pool_size=cfg.pool_size, maf_steps=cfg.maf_steps,
                   maf_scenes=cfg.maf_scenes)  # fmt: skip
    return out


def _base_identity(base: Path) -> str:
    try:
        return str(read_manifest(base).get("weights_sha256", ""))[:16]
    except ModelFileError:
        return str(base)


def _finished(run_dir: Path, steps: int) -> bool:
    try:
        data = json.loads((run_dir / "metrics.json").read_text())
        read_manifest(run_dir / "model")
    except (OSError, ValueError, ModelFileError):
        return False
    return int(data.get("steps", -1)) >= steps


def resolve_base(cfg: EffectConfig, out: Path, log) -> Path:
    """The shared base every arm starts from: the shipped model, a given directory, or one trained here."""
    from flow_anomaly_ros.segmentation.base_model import default_base_model, require_base_model

    if cfg.base == SHIPPED:
        return require_base_model(default_base_model())
    if cfg.base != SCRATCH:
        return require_base_model(cfg.base)
    from flow_anomaly_ros.segmentation.finetune import finetune

    run = out / "base"
    if not _finished(run, cfg.base_steps):
        log(f"[effect] base: {cfg.base_steps} steps of inlier-only training from scratch")
        ft = finetune_config(cfg, run, cfg.base_steps, cfg.base_lr, None, probability=0.0, freeze_bn=False)
        finetune(ft, progress=cfg.progress)
    return run / "model"


def train_scene_maf(cfg: EffectConfig, out: Path, seed: int, log=print):
    """The patch MAF of ``seed``: NLL on patches of anomaly-free training scenes; cached in ``out / 'maf'``."""
    from flow_anomaly_ros.synthesis.patch_flow import PatchFlow, train_patch_flow

    path = out / "maf"
    try:
        return PatchFlow.load(path)
    except ModelFileError:
        pass
    log(f"[effect] MAF (seed {seed}): {cfg.maf_steps} NLL steps on {cfg.patch_size}x{cfg.patch_size} inlier patches")
    patches = inlier_patches(cfg, seed)
    pf = train_patch_flow(
        patches, _maf_config_for(cfg, seed), cfg.maf_steps, cfg.maf_lr, checkpoint_dir=out / "maf_checkpoint",
        seed=seed, progress=cfg.progress,
    )  # fmt: skip
    pf.save(path, {"training_data": {"street_scenes": cfg.maf_scenes, "patches": len(patches)}})
    return pf


def inlier_patches(cfg: EffectConfig, seed: int | None = None) -> np.ndarray:
    """Patches of the training scenes (the same scenes the segmentation net trains on)."""
    from flow_anomaly_ros.synthesis.patches import extract_patches
    from flow_anomaly_ros.synthesis.sources import frames_from_scenes

    seed = cfg.seed if seed is None else seed
    frames = (f[1] for f in frames_from_scenes(cfg.maf_scenes, *cfg.size, seed=seed))
    return extract_patches(frames, cfg.patch_size, cfg.maf_patches_per_scene, np.random.default_rng(seed))


def _sampler_config(cfg: EffectConfig):
    from flow_anomaly_ros.synthesis.sampling import SamplerConfig

    return SamplerConfig(
        mode=cfg.sampling_mode,
        temperature=cfg.temperature,
        low_quantile=cfg.low_quantile,
        high_quantile=cfg.high_quantile,
    )


def patch_source_for_arm(cfg: EffectConfig, arm: str, out: Path, seed: int, log=print):
    """(patch source, sampler or None) of an arm: noise, a pool of MAF low-likelihood samples, or the joint MAF."""
    from flow_anomaly_ros.synthesis.sampling import LowLikelihoodSampler, PatchPool, uniform_noise_source

    if arm in ("no_negatives", "noise"):  # no_negatives never calls it: probability 0
        return uniform_noise_source(cfg.patch_size), None
    if arm == "maf":
        sampler = LowLikelihoodSampler(train_scene_maf(cfg, out, seed, log), _sampler_config(cfg))
        return PatchPool(sampler, size=cfg.pool_size, refresh_every=cfg.pool_size * 2), sampler
    from flow_anomaly_ros.synthesis.joint import JointMAFSource

    joint = JointMAFSource.create(
        inlier_patches(cfg, seed),
        _maf_config_for(cfg, seed),
        _sampler_config(cfg),
        maf_steps_per_call=max(1, cfg.maf_steps // max(1, cfg.finetune_steps)),
        lr=cfg.maf_lr,
        seed=seed,
    )
    return joint, joint.sampler


def _maf_config_for(cfg: EffectConfig, seed: int):
    from flow_anomaly_ros.flows.maf import MAFConfig

    return MAFConfig(cfg.patch_size**2 * 3, cfg.maf_transforms, cfg.maf_hidden, seed=seed)


def train_arm(cfg: EffectConfig, arm: str, seed: int, base: Path, seed_dir: Path, log=print) -> tuple[Path, Any]:
    """Fine-tune (or reuse) one arm of one seed from ``base``; returns (run directory, sampler or None)."""
    from flow_anomaly_ros.segmentation.finetune import finetune

    run = seed_dir / "arms" / arm
    source, sampler = patch_source_for_arm(cfg, arm, seed_dir, seed, log)
    settings = _arm_settings(cfg, arm, seed, base)
    if _finished(run, cfg.finetune_steps) and _read_json(run / "arm_settings.json") != settings:
        log(f"[effect] arm {arm}: settings changed since the cached run; training it again")
        shutil.rmtree(run)
    if not _finished(run, cfg.finetune_steps):
        log(f"[effect] arm {arm} (seed {seed}): {cfg.finetune_steps} fine-tuning steps from the shared base")
        if run.exists() and _read_json(run / "arm_settings.json") != settings:
            shutil.rmtree(run)  # a checkpoint of other settings must not be resumed
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "arm_settings.json", settings)
        prob = 0.0 if arm == "no_negatives" else cfg.patch_probability
        ft = finetune_config(cfg, run, cfg.finetune_steps, cfg.finetune_lr, str(base), prob, freeze_bn=True,
                             anomaly_weight=cfg.anomaly_weight, seed=seed)  # fmt: skip
        finetune(ft, progress=cfg.progress, patch_source=source)
    return run, sampler


def test_scenes(cfg: EffectConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
    """(image, label, anomaly mask, kind) of the held-out test scenes: one kind per scene, every kind in turn.

    Test scenes hold every kind including :data:`~flow_anomaly_ros.data.street_scenes.HELD_OUT_KINDS` (never seen in
    training, validation or the demo); validation scenes only the ordinary ones. A scene whose objects are hidden
    behind a nearer car is redrawn with the next seed.
    """
    from flow_anomaly_ros.data.street_scenes import ALL_ANOMALY_KINDS, ANOMALY_KINDS, generate_scene, scene_seed

    kinds = ALL_ANOMALY_KINDS if cfg.eval_on == "test" else ANOMALY_KINDS
    base_seed = cfg.seed + EVAL_SEEDS[cfg.eval_on] if cfg.eval_on != "test" else EVAL_SEEDS["test"]
    out = []
    for i in range(cfg.test_scenes):
        kind = kinds[i % len(kinds)]
        for attempt in range(8):
            rng = np.random.default_rng(scene_seed(base_seed + 100_000 * attempt, i))
            scene = generate_scene(*cfg.size, rng, num_anomalies=int(rng.integers(1, 3)), anomaly_kinds=(kind,))
            if scene.anomaly_mask.any():
                break
        out.append((scene.image, scene.label, scene.anomaly_mask, kind))
    return out


def evaluate_arm(model_dir: Path, scenes, methods=REPORT_METHODS) -> tuple[dict[str, dict[str, float]], float, dict]:
    """Metrics per score method, inlier mIoU and AP per anomaly kind of one model (one inference per image)."""
    from flow_anomaly_ros.evaluation.pixel_metrics import AnomalyPixelAccumulator, ConfusionMatrix
    from flow_anomaly_ros.runtime.torch_backend import TorchBackend
    from flow_anomaly_ros.segmentation.scores import score_map

    backend = TorchBackend.from_path(model_dir)
    confusion = ConfusionMatrix(19)
    accs = {m: AnomalyPixelAccumulator() for m in methods}
    per_kind: dict[str, dict[str, AnomalyPixelAccumulator]] = {}
    for image, label, mask, kind in scenes:
        logits = backend.infer(image)
        confusion.update(logits.argmax(1)[0], label)
        ood = mask.astype(np.uint8)
        for m in methods:
            s = score_map(logits, m)[0]
            accs[m].update(s, ood)
            per_kind.setdefault(m, {}).setdefault(kind, AnomalyPixelAccumulator()).update(s, ood)
    metrics = {
        m: {k: float(v) for k, v in a.compute().items() if k in ("ap", "fpr95", "auroc")} for m, a in accs.items()
    }
    kind_ap = {m: {k: float(a.compute()["ap"]) for k, a in sorted(d.items())} for m, d in per_kind.items()}
    return metrics, float(confusion.miou()), kind_ap


def run_effect(cfg: EffectConfig, log=print) -> dict[str, Any]:
    """Run (or resume) the whole experiment over every seed; writes ``effect.json`` and ``effect.md`` in ``cfg.out``."""
    import torch

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    base = resolve_base(cfg, out, log)
    timings["base"] = time.perf_counter() - t
    scenes = test_scenes(cfg)
    results: list[ArmResult] = []
    for seed in cfg.seeds:
        seed_dir = out / f"seed-{seed}"
        for arm in cfg.arms:
            t = time.perf_counter()
            run, sampler = train_arm(cfg, arm, seed, base, seed_dir, log)
            timings[f"{arm}/seed-{seed}"] = time.perf_counter() - t
            metrics, miou, kind_ap = evaluate_arm(run / "model", scenes)
            stats = sampler.total.as_dict() if sampler is not None and sampler.total.proposed else None
            results.append(ArmResult(arm, ARM_SCORE[arm], metrics, miou, timings[f"{arm}/seed-{seed}"], stats,
                                     kind_ap, seed))  # fmt: skip
            log(f"[effect] {arm} seed {seed}: {json.dumps(metrics[ARM_SCORE[arm]])} mIoU {miou:.3f}")
    _, base_miou, _ = evaluate_arm(base, scenes, methods=("max_softmax",))
    summary = summarize(results)
    report = {
        "config": asdict(cfg),
        "arms": [asdict(r) for r in results],
        "summary": summary,
        "verdict": verdict(results),
        "base": {"path": str(base), "miou": base_miou},
        "seconds": time.perf_counter() - t_start,
        "timings_s": timings,
        "base_model": str(base),
    }
    atomic_write_json(out / "effect.json", report)
    atomic_write_text(out / "effect.md", format_table(summary, report))
    return report


def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def summarize(results: list[ArmResult]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every table row (arm, method) present in ``results``."""
    rows = []
    for arm, method, name in TABLE_ROWS:
        runs = [r for r in results if r.arm == arm and method in r.metrics]
        if not runs:
            continue
        row: dict[str, Any] = {"arm": arm, "method": method, "name": name}
        for k in ("ap", "fpr95", "auroc"):
            row[k] = _mean_std([r.metrics[method][k] for r in runs])
        row["miou"] = _mean_std([r.miou for r in runs])
        kinds = sorted({k for r in runs for k in r.per_kind_ap.get(method, {})})
        row["per_kind_ap"] = {k: _mean_std([r.per_kind_ap[method][k] for r in runs]) for k in kinds}
        rows.append(row)
    return rows


def verdict(results: list[ArmResult]) -> dict[str, Any]:
    """Does ``maf`` beat the baselines on mean AP and FPR95 (and by more than the seed spread), mIoU within 2?"""

    def mean_std(arm: str, method: str, key: str) -> tuple[float, float] | None:
        vals = [r.metrics[method][key] for r in results if r.arm == arm and method in r.metrics]
        if not vals:
            return None
        return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0

    if mean_std("maf", "anomaly_prob", "ap") is None:
        return {"checked": False}
    checks: dict[str, bool] = {}
    for base in ("no_negatives", "noise"):
        method = ARM_SCORE[base]
        other_ap, maf_ap = mean_std(base, method, "ap"), mean_std("maf", "anomaly_prob", "ap")
        other_fpr, maf_fpr = mean_std(base, method, "fpr95"), mean_std("maf", "anomaly_prob", "fpr95")
        if other_ap is None or maf_ap is None or other_fpr is None or maf_fpr is None:
            continue
        checks[f"ap_beats_{base}"] = maf_ap[0] > other_ap[0]
        checks[f"fpr95_beats_{base}"] = maf_fpr[0] < other_fpr[0]
        checks[f"ap_beats_{base}_beyond_seed_spread"] = maf_ap[0] - other_ap[0] > max(maf_ap[1], other_ap[1])
    mious = {a: [r.miou for r in results if r.arm == a] for a in ("no_negatives", "maf")}
    if mious["no_negatives"] and mious["maf"]:
        checks["miou_within_2_points"] = 100 * (np.mean(mious["no_negatives"]) - np.mean(mious["maf"])) <= MAX_MIOU_DROP
    required = [k for k in checks if not k.endswith("beyond_seed_spread")]
    return {"checked": True, "all": all(checks[k] for k in required), **checks}


def _pm(stat: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def format_table(summary: list[dict[str, Any]], report: dict[str, Any]) -> str:
    """The Markdown tables of ``docs/synthesis.md``: mean ± std over seeds, then AP per anomaly kind."""
    from flow_anomaly_ros.data.street_scenes import HELD_OUT_KINDS

    cfg = report["config"]
    seeds = sorted({a["seed"] for a in report["arms"]})
    crop = cfg.get("crop") or cfg["size"]
    lines = [
        f"Test: {cfg['test_scenes']} street scenes {cfg['size'][0]}x{cfg['size'][1]} ({cfg.get('eval_on', 'test')}), "
        f"one anomaly kind per scene; kinds {', '.join(HELD_OUT_KINDS)} exist only here. Base: {cfg['base']} "
        f"(inlier mIoU {100 * report['base']['miou']:.1f} on these scenes). Each arm: {cfg['finetune_steps']} "
        f"fine-tuning steps (SGD lr {cfg['finetune_lr']:g}, crops {crop[0]}x{crop[1]}, batch {cfg['batch_size']}), "
        f"negatives: {cfg['patches_per_image']} per image in {100 * cfg.get('patch_probability', 1.0):.0f} % of "
        f"the images, anomaly-loss weight {cfg.get('anomaly_weight', 1.0):g}. Mean ± std over seeds {seeds}.",
        "",
        "| arm | score | AP ↑ | FPR95 ↓ | AUROC ↑ | inlier mIoU ↑ |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(f"| {row['name']} | {row['method']} | {_pm(row['ap'])} | {_pm(row['fpr95'])} | "
                     f"{_pm(row['auroc'])} | {_pm(row['miou'], 100, 1)} |")  # fmt: skip
    kinds = sorted({k for row in summary for k in row["per_kind_ap"]})
    if kinds:
        lines += ["", "AP per anomaly kind (mean over seeds; * = held out, only in the test scenes):", ""]
        lines.append("| arm | score | " + " | ".join(k + ("*" if k in HELD_OUT_KINDS else "") for k in kinds) + " |")
        lines.append("|---|---|" + "---|" * len(kinds))
        for row in summary:
            cells = [f"{row['per_kind_ap'][k]['mean']:.3f}" if k in row["per_kind_ap"] else "-" for k in kinds]
            lines.append(f"| {row['name']} | {row['method']} | " + " | ".join(cells) + " |")
    for a in report["arms"]:
        if a.get("sampling"):
            s = a["sampling"]
            lines.append(
                f"\n{a['arm']} seed {a['seed']} sampling: {s['proposed']} MAF proposals, acceptance "
                f"{s['acceptance_rate']:.3f}, {s['samples_per_s']:.0f} samples/s, fallback {s['fallback']}."
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
    if args.seeds is not None:
        overrides["num_seeds"] = args.seeds
    if args.base is not None:
        overrides["base"] = args.base
    cfg = EffectConfig.quick(args.out, **overrides) if args.quick else EffectConfig(out=args.out, **overrides)
    try:
        report = run_effect(cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print((Path(args.out) / "effect.md").read_text())
    return 0 if report["verdict"].get("all", True) or args.quick else 1


def register_effect(verbs: argparse._SubParsersAction, common) -> None:
    from flow_anomaly_ros.cli import size_arg

    p = verbs.add_parser(
        "effect",
        help="reproduce the effect table: MAF negatives vs closed-set scores vs noise patches, over 3 seeds",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", required=True, metavar="DIR", help="work and result directory (resumable cache)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers are meaningless)")
    p.add_argument("--arms", nargs="+", choices=ARMS, help=f"arms to run (default {' '.join(DEFAULT_ARMS)})")
    p.add_argument("--size", type=size_arg, metavar="HxW", help="test scene size (default 256x512)")
    p.add_argument("--base", metavar="shipped|scratch|DIR",
                   help="shared base: the shipped models/seg_base_mobilenet (default), scratch (trained here for "
                        "--base-steps), or a model directory")  # fmt: skip
    p.add_argument("--seeds", type=int, help="number of seeds from --seed on (default 3; mean ± std in the table)")
    p.add_argument("--base-steps", type=int, help="base training steps with --base scratch (default 400)")
    p.add_argument("--finetune-steps", type=int, help="fine-tuning steps per arm (default 300)")
    p.add_argument("--maf-steps", type=int, help="MAF NLL steps (default 1000)")
    p.add_argument("--train-scenes", type=int, help="training scenes (default 2000)")
    p.add_argument("--test-scenes", type=int, help="test scenes with anomalies, spread over every kind (default 48)")
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
