"""``flow-anomaly fleet evaluate``: many bags through the offline cores in parallel on Ray, one report.

    flow-anomaly fleet evaluate /data/drives --ts-model models/ts_realnvp --out fleet_report
    flow-anomaly fleet evaluate --manifest drives.txt --ts-model M --seg-model S --address auto --out R

Each bag is one Ray task running the same per-bag code as ``flow-anomaly evaluate`` (labelled demo bags: the
metric tables) and ``ts score`` (every bag: alarm events, alarms per hour / km, time per window status). Results are
stored per bag under OUT/results keyed by the bag's and the models' hashes: a re-run skips finished bags. The exit
code is 1 when any bag failed (its row in the report names the problem).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.cli import UserError
    from flow_anomaly_ros.fleet.bag_eval import EvalOptions, FleetModels
    from flow_anomaly_ros.fleet.engine import run_fleet
    from flow_anomaly_ros.fleet.inputs import FleetInputError, collect_jobs
    from flow_anomaly_ros.fleet.report import write_report

    try:
        jobs = collect_jobs(args.bags, args.manifest)
    except FleetInputError as exc:
        raise UserError(str(exc)) from exc
    for flag, path in (("--ts-model", args.ts_model), ("--seg-model", args.seg_model)):
        if path is not None and not (Path(path) / "manifest.json").is_file():
            raise UserError(f"{flag} {path}: not a model directory (no manifest.json)")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    models = FleetModels(
        str(Path(args.ts_model).resolve()),
        str(Path(args.seg_model).resolve()) if args.seg_model else None,
        seg_backend=args.seg_backend,
    )
    options = EvalOptions(
        imu_topic=args.imu_topic,
        can_topic=args.can_topic,
        camera_topic=args.camera_topic,
        gps_topic=args.gps_topic,
        top_signals=args.top,
        metrics=not args.no_metrics,
    )
    run = run_fleet(jobs, models, args.out, options, address=args.address, workers=args.workers, progress=True)
    page = write_report(
        run.results,
        args.out,
        {"done": run.done, "skipped": run.skipped, "failed": run.failed, "wall_s": run.wall_s},
    )
    failed = [r for r in run.results if r.get("status") != "ok"]
    print(
        f"{len(run.results)} bags: {run.done} evaluated, {run.skipped} already done, {len(failed)} failed "
        f"({run.wall_s:.1f} s); report {page}"
    )
    for r in failed:
        print(f"  FAILED {r['path']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    """``fleet train``: ``ts train --bag`` over many bags, per-bag features on Ray, the fit in this process."""
    from flow_anomaly_ros.cli import UserError
    from flow_anomaly_ros.fleet.inputs import FleetInputError, collect_jobs
    from flow_anomaly_ros.fleet.train import train_fleet
    from flow_anomaly_ros.timeseries.bag_training import BagTrainingError, imu_topic_map, resolve_config_dbc
    from flow_anomaly_ros.timeseries.cli_common import load_config
    from flow_anomaly_ros.timeseries.experiment import detector_params

    try:
        bags = [j.path for j in collect_jobs(args.bags, args.manifest)]
    except FleetInputError as exc:
        raise UserError(str(exc)) from exc
    config, doc = load_config(args.config)
    params = detector_params(args.detector, args.quick, args.epochs)
    try:
        config = resolve_config_dbc(config, args.config)
        topics = imu_topic_map(args.imu_topic, config)
        model, summary = train_fleet(
            config, doc, bags, args.detector, topics, args.can_topic, params, args.stamps, args.threads,
            args.address, args.workers,
        )  # fmt: skip
    except BagTrainingError as exc:
        raise UserError(str(exc)) from exc
    model.save(args.out, training=summary)
    print(
        f"bags: {len(bags)}, {summary['data']['duration_s']:.1f} s; windows {summary['n_train']} train / "
        f"{summary['n_calibrate']} calibration (features {summary['features_s']:.1f} s on Ray)"
    )
    print(f"wrote {args.out} ({model.model_id}); threshold {model.detector.threshold_:.4g}")
    return 0


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bags", nargs="*", metavar="BAG_OR_DIR", help="bags, or directories searched for rosbag2 bags")
    p.add_argument(
        "--manifest", type=Path, default=None, help="file with one bag per line: PATH [VEHICLE [DRIVE]] (commas ok)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="local Ray: number of parallel bags (default: the CPU count)"
    )
    p.add_argument(
        "--address",
        default=None,
        help="existing Ray cluster: 'auto' (on a node of it) or ray://HOST:10001 (Ray client); default: local Ray",
    )


def register(subparsers: Any, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    sub.required = True
    p = sub.add_parser("evaluate", help="evaluate many bags on Ray and write one report (HTML, CSV, JSON)")
    _ray_args(p)
    p.add_argument("--ts-model", required=True, help="time-series model directory (from 'ts train')")
    p.add_argument("--seg-model", default=None, help="camera model directory (optional: camera alarms and metrics)")
    p.add_argument("--seg-backend", default="onnxruntime", help="camera runtime backend (default onnxruntime)")
    p.add_argument("--out", type=Path, required=True, help="report directory; results/ in it makes runs resumable")
    p.add_argument("--imu-topic", default="/imu/data", help="sensor_msgs/Imu topic (default /imu/data)")
    p.add_argument("--can-topic", default="/from_can_bus", help="can_msgs/Frame topic (default /from_can_bus)")
    p.add_argument("--camera-topic", default="/camera/image_raw", help="sensor_msgs/Image topic (with --seg-model)")
    p.add_argument("--gps-topic", default="/gps/fix", help="sensor_msgs/NavSatFix topic for alarms per km")
    p.add_argument("--top", type=int, default=3, help="top contributing signals per alarm event (default 3)")
    p.add_argument("--no-metrics", action="store_true", help="labelled bags: skip the evaluate metric tables")
    p.set_defaults(func=cmd_evaluate)

    from flow_anomaly_ros.timeseries.detectors import detector_names

    p = sub.add_parser("train", help="ts train --bag over many bags: per-bag features on Ray, the fit here")
    _ray_args(p)
    p.add_argument(
        "--config", type=Path, default=None, help="model config YAML (default: config/timeseries_model.yaml)"
    )
    p.add_argument("--detector", choices=detector_names(), default="realnvp")
    p.add_argument("--out", type=Path, required=True, help="model directory to write (atomically)")
    p.add_argument("--epochs", type=int, default=None, help="override the detector's epochs")
    p.add_argument("--quick", action="store_true", help="smaller model, fewer epochs (smoke runs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the fit")
    p.add_argument("--imu-topic", action="append", default=None, metavar="TOPIC[=SOURCE]", help="as in ts train")
    p.add_argument("--can-topic", default="/from_can_bus", help="can_msgs/Frame topic (default /from_can_bus)")
    p.add_argument("--stamps", choices=("header", "bag"), default="header", help="as in ts train")
    p.set_defaults(func=cmd_train)
