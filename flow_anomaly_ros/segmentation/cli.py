"""``flow-anomaly seg``: create, fine-tune, export, build TensorRT engines for, and evaluate segmentation models.

Subcommands (each ``--help`` lists its options):

- ``init``: a model directory from a backbone and, optionally, a local checkpoint (never downloads).
- ``train-base CONFIG``: the base network (inlier classes only, augmented, resumable); ``--ship DIR`` writes it fp16.
- ``finetune CONFIG``: fine-tuning with pasted anomaly patches (YAML, see ``config/segmentation_finetune.yaml``);
  resumes automatically; multi-GPU with ``torchrun --nproc_per_node=N -m flow_anomaly_ros.cli seg finetune ...``.
- ``export MODEL``: ``model.onnx`` (opset 17, dynamic N/H/W, spec in its metadata), optional torch parity check.
- ``build-engine MODEL``: build (or find cached) the TensorRT engine next to the ONNX and exit (run on the target).
- ``evaluate MODEL``: mIoU and anomaly AP / FPR95 / AUROC for every score method, a Markdown/JSON table and PNG
  overlays; ``--calibrate`` writes per-method thresholds into the model's manifest.
- ``scenes``: write procedural street scenes as a plain folder or in the Cityscapes / SMIYC / Road Anomaly /
  Fishyscapes layouts (to try the real loaders without the data sets).
- ``info MODEL``: the model's description and cached engines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flow_anomaly_ros.cli import size_arg


def register(subparsers: Any, name: str, help_text: str) -> None:
    from flow_anomaly_ros.segmentation.spec import BACKBONES, DEFAULT_BACKBONE, SCORE_METHODS

    seg = subparsers.add_parser(name, help=help_text, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = seg.add_subparsers(dest="seg_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("init", help="create a model directory (backbone + optional local checkpoint)")
    p.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE, help=f"default: {DEFAULT_BACKBONE}")
    p.add_argument("--weights", type=Path, help="local checkpoint (.pth/.pt/.safetensors or model dir)")
    p.add_argument("--input-size", type=size_arg, help="fixed network input HxW (images are resized); default: native")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("finetune", help="fine-tune with pasted anomaly patches (resumable, DDP under torchrun)")
    p.add_argument("config", type=Path, help="YAML config (see config/segmentation_finetune.yaml)")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--output-dir", type=Path, help="override output.dir")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser(
        "train-base",
        help="train the base network (inlier classes only, augmented; resumable) and optionally ship it fp16",
        description="Train the base segmentation network from a fine-tune config with no negatives "
        "(config/segmentation_base.yaml: scale/crop/flip/colour augmentation, 19 inlier classes, the anomaly class "
        "gets no examples). Re-running the same command resumes from the last checkpoint. At the end the mIoU on "
        "held-out scenes is measured; --ship DIR writes the fp16 model directory that models/ holds.",
    )
    p.add_argument("config", type=Path, help="YAML config (see config/segmentation_base.yaml)")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--output-dir", type=Path, help="override output.dir")
    p.add_argument(
        "--ship", type=Path, metavar="DIR", help="write the fp16 shippable model (e.g. models/seg_base_mobilenet)"
    )
    p.add_argument("--measure-scenes", type=int, default=32, help="held-out scenes for the mIoU (default: 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_base)

    p = sub.add_parser("export", help="export MODEL to ONNX (opset 17, dynamic N/H/W)")
    p.add_argument("model", type=Path, help="segmentation model directory")
    p.add_argument("--out", type=Path, help="ONNX file (default: MODEL/model.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17; TensorRT 8.5/8.6 needs <= 17)")
    p.add_argument("--verify", action="store_true", help="compare ONNX Runtime with torch on street scenes")
    p.add_argument(
        "--verify-size", type=size_arg, default=(128, 256), help="HxW of the --verify scenes (default: 128x256)"
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("build-engine", help="build the cached TensorRT engine for MODEL and exit (GPU machine)")
    p.add_argument("model", type=Path, help="model directory with model.onnx, or an .onnx file")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="default: fp16")
    p.add_argument("--device", default="cuda", help="CUDA device, e.g. cuda:1 (default: cuda)")
    p.add_argument(
        "--shape",
        type=size_arg,
        help="camera resolution HxW (the camera node's engine_shape); the engine takes this size unless "
        "--min-shape/--max-shape widen it. Default: the model's input_size, else any size 32x32..2160x3840",
    )
    p.add_argument("--input-size", type=size_arg, help="the camera node's input_size HxW (frames resized to it)")
    p.add_argument("--min-shape", type=size_arg, help="smallest input HxW the engine accepts")
    p.add_argument("--max-shape", type=size_arg, help="largest input HxW the engine accepts")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch the engine accepts (default: 1)")
    p.add_argument("--calib-images", type=Path, help="INT8: folder of calibration images (jpg/png)")
    p.add_argument("--calib-scenes", type=int, default=0, help="INT8: use N procedural street scenes instead")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching engine is cached")
    p.set_defaults(func=_cmd_build_engine)

    p = sub.add_parser("evaluate", help="mIoU and anomaly AP/FPR95/AUROC per score method, table + overlays")
    p.add_argument("model", type=Path, help="model directory (or .onnx for onnxruntime/tensorrt)")
    p.add_argument(
        "--data",
        default="street_scenes",
        help="street_scenes | cityscapes:ROOT (mIoU) | benchmark:ROOT (SMIYC/RoadAnomaly/Fishyscapes)",
    )
    p.add_argument("--num", type=int, default=16, help="images to evaluate (street scenes: generated; default: 16)")
    p.add_argument("--size", type=size_arg, default=(256, 512), help="street-scene HxW (default: 256x512)")
    p.add_argument("--seed", type=int, default=10_000, help="street-scene seed (default: 10000)")
    p.add_argument(
        "--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"), help="default: auto"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    p.add_argument("--methods", nargs="+", default=list(SCORE_METHODS), choices=SCORE_METHODS, help="default: all")
    p.add_argument("--out", type=Path, help="folder for results.md, results.json and overlays")
    p.add_argument("--overlays", type=int, default=4, help="number of overlay PNGs (default: 4)")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="write each method's threshold at 95%% TPR on this data into MODEL/manifest.json",
    )
    p.set_defaults(func=_cmd_evaluate)  # fmt: skip

    p = sub.add_parser("scenes", help="write procedural street scenes (plain or in a benchmark layout)")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--num", type=int, default=8, help="number of scenes (default: 8)")
    p.add_argument("--size", type=size_arg, default=(256, 512), help="HxW (default: 256x512)")
    p.add_argument("--anomalies", type=int, default=1, help="anomalous objects per scene")
    p.add_argument("--layout", default="plain",
                   choices=("plain", "cityscapes", "smiyc", "road_anomaly", "fishyscapes"),
                   help="folder layout (default: plain)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.set_defaults(func=_cmd_scenes)

    p = sub.add_parser("info", help="print a model's description and cached TensorRT engines")
    p.add_argument("model", type=Path, help="model directory or .onnx file")
    p.set_defaults(func=_cmd_info)


def _user_error(message: str) -> Exception:
    from flow_anomaly_ros.cli import UserError

    return UserError(message)


def _cmd_init(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.segmentation.model import build_model, save_segmentation_model
    from flow_anomaly_ros.segmentation.spec import SegmentationSpec

    model = build_model(args.backbone, weights_path=args.weights)
    spec = SegmentationSpec(backbone=args.backbone, input_size=args.input_size)
    extra = {"initialised_from": str(args.weights) if args.weights else "random (no checkpoint given)"}
    save_segmentation_model(args.out, model, spec, extra)
    print(f"wrote {args.out} ({args.backbone}, {spec.num_classes} classes, init: {extra['initialised_from']})")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.segmentation.config import FinetuneConfig
    from flow_anomaly_ros.segmentation.finetune import finetune

    try:
        cfg = FinetuneConfig.from_yaml(args.config)
        if args.steps is not None:
            cfg.train.steps = args.steps
        if args.output_dir is not None:
            cfg.output.dir = str(args.output_dir)
        if args.no_resume:
            cfg.output.resume = False
        cfg.validate()
    except ValueError as exc:
        raise _user_error(str(exc)) from exc
    result = finetune(cfg, progress=not args.quiet)
    last = result.history[-1] if result.history else {}
    print(json.dumps({"model": str(result.model_dir), "steps": result.steps, "resumed_from": result.resumed_from,
                      "last_validation": last}, indent=2))  # fmt: skip
    return 0


def _cmd_train_base(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.segmentation.base_model import measure_miou, ship_base_model
    from flow_anomaly_ros.segmentation.config import FinetuneConfig
    from flow_anomaly_ros.segmentation.finetune import finetune

    try:
        cfg = FinetuneConfig.from_yaml(args.config)
        if args.steps is not None:
            cfg.train.steps = args.steps
        if args.output_dir is not None:
            cfg.output.dir = str(args.output_dir)
        cfg.validate()
    except ValueError as exc:
        raise _user_error(str(exc)) from exc
    if cfg.patches.per_image and cfg.patches.probability:
        raise _user_error(f"{args.config}: a base network trains without negatives; set patches.per_image: 0 "
                          "(use `seg finetune` to train with pasted anomaly patches)")  # fmt: skip
    result = finetune(cfg, progress=not args.quiet)
    v = cfg.validation
    measured = measure_miou(result.model_dir, args.measure_scenes, tuple(v.size), v.seed)
    report: dict[str, Any] = {"model": str(result.model_dir), "steps": result.steps, "measured": measured}
    if args.ship:
        training = {"config": cfg.to_dict(), "config_file": str(args.config), "steps": result.steps,
                    "data_seed": cfg.data.seed, "history": result.history}  # fmt: skip
        report["shipped"] = str(ship_base_model(result.model_dir, args.ship, training, measured))
    print(json.dumps(report, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.runtime.export import export_onnx, parity_check

    out = export_onnx(args.model, args.out, opset=args.opset)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset})")
    if args.verify:
        import numpy as np

        from flow_anomaly_ros.data.street_scenes import generate_scene

        h, w = args.verify_size
        images = np.stack([generate_scene(h, w, seed=i, num_anomalies=1).image for i in range(2)])
        report = parity_check(args.model, images, onnx_path=str(out))
        print(json.dumps(report, indent=2))
        if report["argmax_agreement"] < 0.999:
            raise _user_error(f"ONNX export disagrees with torch: {report}")
    return 0


def build_engine_options(args: argparse.Namespace) -> dict[str, object]:
    """The shape options of ``seg build-engine``, through the function the camera node uses (same cache key)."""
    from flow_anomaly_ros.runtime.tensorrt_plan import engine_options

    return engine_options(args.input_size, args.shape, args.min_shape, args.max_shape, args.max_batch)


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.runtime.tensorrt_backend import TensorRTBackend

    calib = None
    if args.precision == "int8":
        calib = _calibration_images(args)
    try:
        path = TensorRTBackend.build_only(
            args.model, device=args.device, precision=args.precision, calibration_images=calib,
            force_rebuild=args.force, **build_engine_options(args),
        )  # fmt: skip
    except (RuntimeError, ValueError) as exc:
        raise _user_error(f"cannot build the TensorRT engine: {exc}") from exc
    print(f"engine: {path}")
    return 0


def _calibration_images(args: argparse.Namespace):
    if args.calib_images:
        from flow_anomaly_ros.data.anomaly_benchmarks import IMAGE_EXTENSIONS
        from flow_anomaly_ros.data.cityscapes import read_rgb

        files = sorted(p for p in args.calib_images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise _user_error(f"no images in {args.calib_images}")
        return (read_rgb(p) for p in files)
    if args.calib_scenes:
        from flow_anomaly_ros.data.street_scenes import generate_scene

        h, w = args.input_size or args.shape or (512, 1024)
        return (generate_scene(h, w, seed=i).image for i in range(args.calib_scenes))
    return None  # an existing calibration cache next to the ONNX is used, else a clear error


def _iter_eval_data(args: argparse.Namespace):
    """(image, trainId label or None, ood or None, name)."""
    kind, _, root = args.data.partition(":")
    if kind == "street_scenes":
        from flow_anomaly_ros.data.street_scenes import StreetSceneDataset

        ds = StreetSceneDataset(args.num, *args.size, seed=args.seed, anomaly_fraction=1.0)
        for i, s in enumerate(ds):
            yield s.image, s.label, s.anomaly_mask.astype("uint8"), f"scene{i:04d}"
    elif kind == "cityscapes" and root:
        from flow_anomaly_ros.data.cityscapes import CityscapesDataset

        ds = CityscapesDataset(root, split="val")
        for i in range(min(args.num, len(ds))):
            image, label = ds[i]
            yield image, label, None, ds.items[i][0].stem
    elif kind == "benchmark" and root:
        from flow_anomaly_ros.data.anomaly_benchmarks import AnomalyBenchmark

        ds = AnomalyBenchmark(root)
        for i in range(min(args.num, len(ds))):
            image, ood = ds[i]
            yield image, None, ood, ds.items[i][0].stem
    else:
        raise _user_error(f"--data must be street_scenes, cityscapes:ROOT or benchmark:ROOT, got {args.data!r}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.runtime import load_backend
    from flow_anomaly_ros.segmentation.evaluate import evaluate_backend, write_report

    backend = load_backend(args.backend, args.model, device=args.device)
    print(f"backend: {backend.name}", file=sys.stderr)
    report = evaluate_backend(backend, _iter_eval_data(args), args.methods, overlays=args.overlays)
    report["data"] = args.data
    if args.out:
        write_report(args.out, report)
    print(report["table"])
    if args.calibrate:
        from flow_anomaly_ros.segmentation.evaluate import write_thresholds

        if not args.model.is_dir():
            raise _user_error("--calibrate needs a model directory (its manifest.json receives the thresholds)")
        write_thresholds(args.model, report["thresholds_at_95tpr"], args.data)
        print(f"thresholds written to {args.model / 'manifest.json'}: {report['thresholds_at_95tpr']}")
    return 0


def _cmd_scenes(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from flow_anomaly_ros.data.street_scenes import generate_scene

    scenes = [generate_scene(*args.size, seed=args.seed + i, num_anomalies=args.anomalies) for i in range(args.num)]
    if args.layout == "plain":
        from flow_anomaly_ros.segmentation.classes import colorize

        args.out.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(scenes):
            Image.fromarray(s.image).save(args.out / f"scene{i:04d}.png")
            Image.fromarray(s.label).save(args.out / f"scene{i:04d}_trainIds.png")
            Image.fromarray(colorize(s.label)).save(args.out / f"scene{i:04d}_color.png")
    elif args.layout == "cityscapes":
        from flow_anomaly_ros.data.cityscapes import write_cityscapes_layout

        for split in ("train", "val"):
            write_cityscapes_layout(args.out, [(s.image, np.where(s.anomaly_mask, 255, s.label).astype(np.uint8))
                                               for s in scenes], split=split)  # fmt: skip
    else:
        from flow_anomaly_ros.data.anomaly_benchmarks import write_benchmark_layout

        write_benchmark_layout(args.out, [(s.image, s.anomaly_mask.astype(np.uint8)) for s in scenes], args.layout)
    print(f"wrote {len(scenes)} scenes ({args.layout}) to {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.model_store import read_manifest
    from flow_anomaly_ros.runtime.engine_cache import cached_engines
    from flow_anomaly_ros.runtime.model_files import find_onnx, read_onnx_metadata, spec_from_metadata

    if args.model.is_dir():
        manifest = read_manifest(args.model)
        info = {k: manifest.get(k) for k in ("kind", "backbone", "num_classes", "input_size", "mean", "std",
                                              "score_method", "thresholds", "weights_sha256")}  # fmt: skip
        onnx = args.model / "model.onnx"
        info["onnx"] = str(onnx) if onnx.is_file() else None
    else:
        onnx = find_onnx(args.model)
        info = spec_from_metadata(read_onnx_metadata(onnx), onnx).to_manifest()
        info["onnx"] = str(onnx)
    info["tensorrt_engines"] = [str(p) for p in cached_engines(onnx)] if onnx.is_file() else []
    print(json.dumps(info, indent=2))
    return 0
