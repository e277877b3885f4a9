"""``flow-anomaly maf``: train the patch MAF, sample low-likelihood patches, paste them into images, make figures,
and reproduce the effect table.

Verbs:

- ``train``   inlier images (``--images DIR`` | ``--bag BAG [--topic T]`` | ``--scenes N``) → patches → MAF (NLL) →
  model directory; resumes from ``--checkpoint DIR`` after a kill.
- ``sample``  MAF model → N patches from the low-likelihood region (``outside`` / ``boundary`` / ``any``), written as
  ``.npz`` and a PNG grid; prints acceptance rate and samples/s.
- ``paste``   inlier images + patches (MAF or ``--noise``) → Cityscapes-layout data set with manifest.
- ``figures`` Figure 9 (untrained vs trained MAF patches) and Figure 10 (images before/after pasting) as PNG.
- ``effect``  the experiment: MAF negatives vs max-softmax vs uniform-noise negatives (see ``docs/synthesis.md``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from flow_anomaly_ros.cli import size_arg

DEFAULT_SCENE_SIZE = "128x256"


def _add_input_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("inlier frames (choose one)")
    src.add_argument("--images", metavar="DIR", help="directory of inlier images (recursive; Cityscapes labels used)")
    src.add_argument("--bag", metavar="BAG", help="rosbag2 (MCAP or SQLite3) with an image topic")
    src.add_argument("--topic", metavar="TOPIC", help="image topic in --bag (default: the only image topic)")
    src.add_argument("--scenes", type=int, metavar="N", help="N procedural anomaly-free street scenes")
    src.add_argument("--scene-size", type=size_arg, default=DEFAULT_SCENE_SIZE, metavar="HxW", help="procedural size")
    src.add_argument("--max-images", type=int, default=None, metavar="N", help="use at most N frames")


def _frames(args: argparse.Namespace):
    from flow_anomaly_ros.cli import UserError
    from flow_anomaly_ros.synthesis.sources import frames_from_bag, frames_from_dir, frames_from_scenes

    chosen = [x for x in (args.images, args.bag, args.scenes) if x is not None]
    if len(chosen) != 1:
        raise UserError("give exactly one of --images DIR, --bag BAG or --scenes N")
    try:
        if args.images is not None:
            frames = list(frames_from_dir(args.images, args.max_images))
        elif args.bag is not None:
            frames = list(frames_from_bag(args.bag, args.topic, args.max_images))
        else:
            if args.scenes < 1:
                raise UserError("--scenes must be >= 1")
            n = args.scenes if args.max_images is None else min(args.scenes, args.max_images)
            frames = list(frames_from_scenes(n, *args.scene_size, seed=args.seed))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not frames:
        raise UserError("no inlier frames found")
    return frames


def _maf_config(args: argparse.Namespace):
    from flow_anomaly_ros.flows.maf import MAFConfig

    return MAFConfig(
        features=args.patch_size * args.patch_size * 3,
        num_transforms=args.transforms,
        hidden_features=args.hidden,
        num_blocks=args.blocks,
        use_residual_blocks=args.residual,
        seed=args.seed,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from flow_anomaly_ros.synthesis.patch_flow import train_patch_flow
    from flow_anomaly_ros.synthesis.patches import extract_patches

    torch.set_num_threads(args.threads)
    frames = _frames(args)
    rng = np.random.default_rng(args.seed)
    patches = extract_patches((f[1] for f in frames), args.patch_size, args.per_image, rng, scale=args.scale)
    print(f"{len(frames)} frames -> {len(patches)} patches of {args.patch_size}x{args.patch_size}", file=sys.stderr)
    pf = train_patch_flow(
        patches,
        _maf_config(args),
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        checkpoint_dir=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        progress=not args.quiet,
    )
    pf.save(args.out, {"training_data": {"frames": len(frames), "patches": len(patches), "scale": args.scale}})
    print(json.dumps({"model": str(args.out), **pf.info}, indent=2))
    return 0


def _sampler(args: argparse.Namespace):
    from flow_anomaly_ros.synthesis.patch_flow import PatchFlow
    from flow_anomaly_ros.synthesis.sampling import LowLikelihoodSampler, SamplerConfig

    cfg = SamplerConfig(
        mode=args.mode,
        temperature=args.temperature,
        low_quantile=args.low_quantile,
        high_quantile=args.high_quantile,
        batch_size=args.sample_batch,
    )
    return LowLikelihoodSampler(PatchFlow.load(args.model), cfg)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    from flow_anomaly_ros.synthesis.sampling_defaults import (
        DEFAULT_HIGH_QUANTILE,
        DEFAULT_LOW_QUANTILE,
        DEFAULT_TEMPERATURE,
        SAMPLING_MODES,
    )

    g = p.add_argument_group("sampling")
    g.add_argument("--mode", choices=SAMPLING_MODES, default="outside", help="likelihood region (default outside)")
    g.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="base-distribution std T")
    g.add_argument("--low-quantile", type=float, default=DEFAULT_LOW_QUANTILE, help="inlier log-lik quantile (low)")
    g.add_argument("--high-quantile", type=float, default=DEFAULT_HIGH_QUANTILE, help="upper quantile (boundary)")
    g.add_argument("--sample-batch", type=int, default=1024, help="proposals per MAF inversion batch")


def _write_npz(path: Path, **arrays) -> None:
    from flow_anomaly_ros.model_store import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from flow_anomaly_ros.synthesis.dataset_writer import png_bytes
    from flow_anomaly_ros.synthesis.figures import patch_grid

    torch.set_num_threads(args.threads)
    from flow_anomaly_ros.cli import UserError

    if args.n < 1:
        raise UserError("-n must be >= 1")
    try:
        sampler = _sampler(args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    patches, stats = sampler.sample(args.n, np.random.default_rng(args.seed))
    out = Path(args.out)
    _write_npz(out, patches=patches)
    if args.grid:
        from flow_anomaly_ros.model_store import atomic_write_bytes

        atomic_write_bytes(args.grid, png_bytes(patch_grid(patches[:256], cols=16)))
    print(json.dumps({"patches": str(out), "shape": list(patches.shape), **stats.as_dict()}, indent=2))
    return 0


def _patch_source(args: argparse.Namespace):
    from flow_anomaly_ros.synthesis.sampling import PatchPool, uniform_noise_source

    if args.noise:
        return uniform_noise_source(args.patch_size), None
    if args.patches:
        with np.load(args.patches) as data:
            pool = data["patches"]
        if pool.ndim != 4 or pool.dtype != np.uint8:
            from flow_anomaly_ros.cli import UserError

            raise UserError(f"{args.patches} holds {pool.dtype} {pool.shape}, expected uint8 (n, p, p, 3) patches")

        def from_file(n: int, rng: np.random.Generator) -> np.ndarray:
            return pool[rng.integers(0, len(pool), n)]

        return from_file, None
    sampler = _sampler(args)
    return PatchPool(sampler, size=args.pool_size), sampler


def _cmd_paste(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from flow_anomaly_ros.cli import UserError
    from flow_anomaly_ros.synthesis.dataset_writer import CityscapesWriter
    from flow_anomaly_ros.synthesis.paste import IGNORE_ID, paste_patches

    if sum(x is not None and x is not False for x in (args.model, args.patches, args.noise or None)) != 1:
        raise UserError("give exactly one patch source: --model DIR, --patches FILE.npz or --noise")
    frames = _frames(args)
    source, sampler = _patch_source(args)
    settings = {k: v for k, v in vars(args).items() if k != "func" and isinstance(v, str | int | float | bool | None)}
    writer = CityscapesWriter(args.out, split=args.split, settings=settings)
    unlabeled = 0
    for i, (name, image, label) in enumerate(tqdm(frames, desc="paste", disable=args.quiet)):
        if writer.has(name):
            continue
        rng = np.random.default_rng([args.seed, i])  # per-image seed: a resumed run writes the same images
        if label is None:
            unlabeled += 1
            label = np.full(image.shape[:2], IGNORE_ID, np.uint8)
        patches = source(args.patches_per_image, rng)
        out, lbl, mask, boxes = paste_patches(
            image, label, patches, rng, blend=args.blend, ignore_border=args.ignore_border, return_boxes=True
        )
        writer.write(name, out, lbl, mask, extra={"boxes": [vars(b) for b in boxes]})
    summary = {"images": len(writer), "unlabeled_frames": unlabeled}
    if sampler is not None:
        summary["sampling"] = sampler.total.as_dict()
    path = writer.done(summary)
    if unlabeled:
        print(f"note: {unlabeled} frames had no label; their inlier pixels are {IGNORE_ID} (ignore)", file=sys.stderr)
    print(json.dumps({"manifest": str(path), **summary}, indent=2))
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    import torch

    from flow_anomaly_ros.synthesis.figures import figure_pasting, figure_patches
    from flow_anomaly_ros.synthesis.paste import paste_patches
    from flow_anomaly_ros.synthesis.patch_flow import PatchFlow
    from flow_anomaly_ros.synthesis.patches import extract_patches
    from flow_anomaly_ros.synthesis.sampling import LowLikelihoodSampler, SamplerConfig

    torch.set_num_threads(args.threads)
    frames = _frames(args)
    pf = PatchFlow.load(args.model)
    rng = np.random.default_rng(args.seed)
    inliers = extract_patches((f[1] for f in frames[:16]), pf.patch_size, 4, rng)[:64]
    untrained = PatchFlow.untrained(inliers, pf.config)
    untrained.codec = pf.codec  # same pixel mapping, random weights: the paper's "before training"
    any_untrained = LowLikelihoodSampler(untrained, SamplerConfig(mode="any", temperature=1.0))(64, rng)
    any_trained = LowLikelihoodSampler(pf, SamplerConfig(mode="any", temperature=1.0))(64, rng)
    sampler = LowLikelihoodSampler(pf, SamplerConfig(mode=args.mode, temperature=args.temperature))
    negatives, stats = sampler.sample(64, rng)
    out = Path(args.out)
    f9 = figure_patches(
        [
            ("inlier patches", inliers),
            ("untrained MAF (T=1)", any_untrained),
            ("trained MAF (T=1)", any_trained),
            (f"trained, {args.mode} (T={args.temperature:g})", negatives),
        ],
        out / "figure9_maf_patches.png",
    )
    before, after, masks = [], [], []
    for i, (_, image, label) in enumerate(frames[: args.rows]):
        label = label if label is not None else np.zeros(image.shape[:2], np.uint8)
        img2, _, mask = paste_patches(image, label, negatives[2 * i : 2 * i + 2], rng)
        before.append(image)
        after.append(img2)
        masks.append(mask)
    f10 = figure_pasting(before, after, masks, out / "figure10_pasting.png")
    print(json.dumps({"figure9": str(f9), "figure10": str(f10), "sampling": stats.as_dict()}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    maf = subparsers.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    verbs = maf.add_subparsers(dest="maf_command", metavar="VERB")
    verbs.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0, help="seed for everything random (default 0)")
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    train = verbs.add_parser("train", help="train the patch MAF on inlier frames (NLL, resumable)")
    _add_input_args(train)
    g = train.add_argument_group("patches and MAF")
    g.add_argument("--patch-size", type=int, default=8, help="patch side in pixels (default 8 -> 192-d)")
    g.add_argument("--per-image", type=int, default=64, help="random patches per frame (default 64)")
    g.add_argument("--scale", type=float, default=1.0, help="resize frames by this factor first (default 1)")
    g.add_argument("--transforms", type=int, default=4, help="masked affine autoregressive transforms (default 4)")
    g.add_argument("--hidden", type=int, default=128, help="MADE hidden units (default 128)")
    g.add_argument("--blocks", type=int, default=2, help="MADE hidden layers (default 2)")
    g.add_argument("--residual", action="store_true", help="residual MADE blocks")
    g.add_argument("--steps", type=int, default=2000, help="Adam steps (default 2000)")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    g.add_argument("--batch-size", type=int, default=256, help="patches per step (default 256)")
    g.add_argument("--checkpoint", metavar="DIR", help="resumable checkpoint directory (resumes if present)")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    train.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    common(train)
    train.set_defaults(func=_cmd_train)

    sample = verbs.add_parser("sample", help="sample patches from low-likelihood regions of a trained MAF")
    sample.add_argument("--model", required=True, metavar="DIR", help="model directory from `maf train`")
    sample.add_argument("-n", type=int, default=256, help="number of patches (default 256)")
    _add_sampling_args(sample)
    sample.add_argument("--out", required=True, metavar="FILE.npz", help="output .npz with array 'patches'")
    sample.add_argument("--grid", metavar="FILE.png", help="also write a PNG grid of the first 256 patches")
    common(sample)
    sample.set_defaults(func=_cmd_sample)

    paste = verbs.add_parser("paste", help="paste patches into inlier frames -> Cityscapes-layout data set")
    _add_input_args(paste)
    ps = paste.add_argument_group("patch source (choose one)")
    ps.add_argument("--model", metavar="DIR", help="sample from this MAF model")
    ps.add_argument("--patches", metavar="FILE.npz", help="patches written by `maf sample`")
    ps.add_argument("--noise", action="store_true", help="uniform-noise patches (baseline)")
    ps.add_argument("--patch-size", type=int, default=8, help="patch size for --noise (default 8)")
    ps.add_argument("--pool-size", type=int, default=512, help="MAF samples drawn once and reused (default 512)")
    _add_sampling_args(paste)
    pp = paste.add_argument_group("pasting")
    pp.add_argument("--patches-per-image", type=int, default=1, help="patches per frame (default 1)")
    pp.add_argument("--blend", choices=("hard", "soft"), default="soft", help="border blending (default soft)")
    pp.add_argument("--ignore-border", action="store_true", help="label the blended border 255 (ignore)")
    paste.add_argument("--split", default="train", help="Cityscapes split name (default train)")
    paste.add_argument("--out", required=True, metavar="DIR", help="data set root to write")
    common(paste)
    paste.set_defaults(func=_cmd_paste)

    fig = verbs.add_parser("figures", help="PNG figures: MAF patches (Fig. 9), images before/after pasting (Fig. 10)")
    fig.add_argument("--model", required=True, metavar="DIR", help="model directory from `maf train`")
    _add_input_args(fig)
    _add_sampling_args(fig)
    fig.add_argument("--rows", type=int, default=3, help="images in the pasting figure (default 3)")
    fig.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    common(fig)
    fig.set_defaults(func=_cmd_figures)

    try:
        from flow_anomaly_ros.synthesis.effect import register_effect
    except ImportError:  # the experiment needs the segmentation fine-tuning; without it the verb is absent
        return
    register_effect(verbs, common)
