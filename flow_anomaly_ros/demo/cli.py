"""``flow-anomaly demo make-bag OUT`` and ``flow-anomaly demo run`` (what ``make demo`` calls)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flow_anomaly_ros.cli import UserError
from flow_anomaly_ros.demo.config import CACHE_ENV, DemoConfig


def _config(args: argparse.Namespace) -> DemoConfig:
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = cfg.with_overrides(
        seed=args.seed,
        bag_duration_s=args.duration,
        camera_hz=args.camera_hz,
        storage=getattr(args, "storage", None),
        replay_rate=getattr(args, "rate", None),
        seg_train_steps=getattr(args, "seg_steps", None),
        seg_base="scratch" if getattr(args, "seg_from_scratch", False) else getattr(args, "seg_base", None),
    )
    if cfg.bag_duration_s <= 0 or cfg.camera_hz <= 0:
        raise UserError("--duration and --camera-hz must be > 0")
    return cfg


def _cmd_make_bag(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.data.bags import bag_info, format_info
    from flow_anomaly_ros.demo.recording import make_demo_bag

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} exists already; rosbag2 never overwrites a bag (choose another OUT)")
    cfg = _config(args)
    make_demo_bag(out, cfg, progress=lambda stage, frac: print(f"[{frac * 100:3.0f}%] {stage}", flush=True))
    print(format_info(bag_info(out)))
    print(f"ground truth: {out / 'ground_truth.json'} and {out / 'camera_labels.npz'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.demo.pipeline import run_demo

    run_demo(
        _config(args),
        report_dir=Path(args.report_dir),
        cache=Path(args.cache_dir) if args.cache_dir else None,
        no_cache=args.no_cache,
        live=not args.offline_only,
        install_models=not args.no_install_models,
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the reduced CI-sized demo (short bag, small frames)")
    p.add_argument("--seed", type=int, default=None, help="seed of the injection and the scenes (default 0)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="bag length in seconds (default 60)")
    p.add_argument("--camera-hz", type=float, default=None, metavar="HZ", help="camera frame rate (default 2)")


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    demo = subparsers.add_parser(name, help=help_text, description=help_text)
    verbs = demo.add_subparsers(dest="demo_command", metavar="VERB")
    verbs.required = True

    mk = verbs.add_parser(
        "make-bag",
        help="write the demo rosbag2 (real KITTI IMU/GPS, generated CAN and camera, injected anomalies)",
        description="Write the demo rosbag2 with labelled anomalies in every stream; the ground truth "
        "(ground_truth.json, camera_labels.npz) goes inside the bag directory.",
    )
    mk.add_argument("out", metavar="OUT", help="bag directory to create")
    mk.add_argument("--storage", choices=("mcap", "sqlite3"), default=None, help="storage plugin (default mcap)")
    _common(mk)
    mk.set_defaults(func=_cmd_make_bag)

    run = verbs.add_parser(
        "run",
        help="the end-to-end demo (make demo): bag, models, nodes, DDS replay, report",
        description="Make the demo bag, train the models when not cached, run the nodes on a DDS replay of the bag, "
        f"record their outputs and write the report. Cache: ${CACHE_ENV} or ~/.cache/flow_anomaly_ros.",
    )
    _common(run)
    run.add_argument("--rate", type=float, default=None, help="replay speed factor (default 1.0; --quick 2.0)")
    run.add_argument("--seg-steps", type=int, default=None, help="segmentation fine-tuning steps (default 300)")
    run.add_argument(
        "--seg-base",
        default=None,
        metavar="DIR",
        help="segmentation model to fine-tune from (default: the shipped models/seg_base_mobilenet)",
    )
    run.add_argument(
        "--seg-from-scratch",
        action="store_true",
        help="train a small base from random weights first instead of using the shipped one",
    )
    run.add_argument("--report-dir", default="demo/report", help="where index.html and the PNGs go")
    run.add_argument("--cache-dir", default=None, help=f"cache directory (default ${CACHE_ENV} or ~/.cache/...)")
    run.add_argument("--no-cache", action="store_true", help="rebuild the bag and retrain every model")
    run.add_argument("--offline-only", action="store_true", help="skip the live DDS run")
    run.add_argument(
        "--no-install-models",
        action="store_true",
        help="do not copy the trained models to models/seg_mobilenet and models/ts_realnvp (the "
        "defaults of config/*.yaml, so launch files and `flow-anomaly up` find them)",
    )
    run.set_defaults(func=_cmd_run)
