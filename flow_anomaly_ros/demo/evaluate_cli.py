"""``flow-anomaly evaluate BAG [--live]``: metrics of the nodes on a demo bag, offline or over DDS."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flow_anomaly_ros.cli import UserError


def _models(args: argparse.Namespace):
    from flow_anomaly_ros.demo.cores import DemoModels
    from flow_anomaly_ros.demo.pipeline import models_for_bag

    if args.ts_model or args.seg_model:
        if not (args.ts_model and args.seg_model):
            raise UserError("give both --ts-model and --seg-model, or neither (then the demo cache is used)")
        return DemoModels(
            ts_models={args.detector: Path(args.ts_model)},
            seg_model=Path(args.seg_model),
            deployed_detector=args.detector,
        )
    return models_for_bag(Path(args.bag), Path(args.cache_dir) if args.cache_dir else None)


def _print_metrics(ev) -> None:
    from flow_anomaly_ros.demo.report import fmt_value, scalar_items

    print(f"{ev.mode} evaluation of {ev.bag} ({ev.wall_s:.1f} s)")
    for name, m in ev.metrics.get("timeseries", {}).items():
        print(f"  time series {name:12s} " + "  ".join(f"{k}={fmt_value(v)}" for k, v in scalar_items(m).items()))
    cam = scalar_items(ev.metrics.get("camera", {}))
    print("  camera                " + "  ".join(f"{k}={fmt_value(v)}" for k, v in cam.items()))
    for row in ev.latency:
        p50, p99 = fmt_value(row["p50_ms"]), fmt_value(row["p99_ms"])
        print(f"  latency {row['stage']}: p50 {p50} ms, p99 {p99} ms (n={row['count']})")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.demo.evaluate import evaluate_live, evaluate_offline
    from flow_anomaly_ros.demo.report import json_default

    bag = Path(args.bag)
    if not bag.exists():
        raise UserError(f"bag {bag} does not exist")
    models = _models(args)
    if args.live:
        ev = evaluate_live(bag, models, rate=args.rate, start_nodes=not args.running_nodes)
    else:
        ev = evaluate_offline(bag, models)
    _print_metrics(ev)
    if args.json:
        out = {"mode": ev.mode, "metrics": ev.metrics, "latency": ev.latency, "counts": ev.counts}
        Path(args.json).write_text(json.dumps(out, indent=1, default=json_default))
        print(f"metrics written to {args.json}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Evaluate the nodes on a demo bag (made by `flow-anomaly demo make-bag`): offline runs the "
        "nodes' cores on the bag's messages without DDS; --live starts the nodes, replays the bag over DDS and "
        "scores what they publish. Both print the same metrics.",
    )
    p.add_argument("bag", metavar="BAG", help="demo bag directory (with ground_truth.json)")
    p.add_argument("--live", action="store_true", help="replay over DDS through the nodes instead of offline")
    p.add_argument("--running-nodes", action="store_true", help="with --live: use nodes already running, start none")
    p.add_argument("--rate", type=float, default=1.0, help="with --live: replay speed factor (default 1.0)")
    p.add_argument("--ts-model", default=None, help="time-series model directory (default: the demo cache's)")
    p.add_argument("--seg-model", default=None, help="segmentation model directory (default: the demo cache's)")
    p.add_argument("--detector", default="realnvp", help="name of --ts-model's detector (default realnvp)")
    p.add_argument("--cache-dir", default=None, help="demo cache directory to take the models from")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the metrics as JSON")
    p.set_defaults(func=_cmd_evaluate)
