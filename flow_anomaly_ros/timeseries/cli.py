"""``flow-anomaly ts``: build the labelled data set, train a detector, evaluate every detector.

    flow-anomaly ts dataset --out data/ts                     # write the labelled data set (npz + labels.json)
    flow-anomaly ts train --detector realnvp --out models/ts_realnvp
    flow-anomaly ts evaluate --out reports/ts                  # all detectors, Markdown report + PNG figures

The data are the real KITTI drive from the gtsam package (CC BY-NC-SA 3.0, never copied into the repository) with
CAN traffic generated from an opendbc DBC and seeded, labelled injected faults.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from flow_anomaly_ros.timeseries import bag_training
from flow_anomaly_ros.timeseries.cli_common import load_config
from flow_anomaly_ros.timeseries.detectors import detector_names


def _dataset(args: argparse.Namespace, config: Any, doc: dict[str, Any], with_tests: bool) -> Any:
    from flow_anomaly_ros.cli import UserError
    from flow_anomaly_ros.data.timeseries_dataset import build_dataset, load_dataset
    from flow_anomaly_ros.timeseries.experiment import dataset_params

    if getattr(args, "data", None):
        return load_dataset(args.data)
    try:
        params = dataset_params(doc)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.seed is not None:
        params["seed"] = args.seed
    if not with_tests:
        params["test_copies"] = 0
    elif getattr(args, "copies", None):
        params["test_copies"] = args.copies
    elif getattr(args, "quick", False):
        params["test_copies"] = 1
    try:
        return build_dataset(config, **params)
    except ValueError as exc:  # split or fault schedule that does not fit the drive
        raise UserError(f"cannot build the data set: {exc}") from exc


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def cmd_dataset(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.data.timeseries_dataset import save_dataset

    config, doc = load_config(args.config)
    t0 = time.perf_counter()
    ds = _dataset(args, config, doc, with_tests=True)
    out = save_dataset(ds, args.out)
    n_faults = sum(len(t.labels) for t in ds.tests)
    print(
        f"wrote {out}: train {ds.train.events.shape[0]} events, calibrate {ds.calibrate.events.shape[0]}, "
        f"{len(ds.tests)} test copies with {n_faults} labelled faults ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``ts train``: on the built-in data set, or with ``--bag`` on the user's own clean recordings."""
    if args.bag:
        return bag_training.cmd_train_bag(args)
    from flow_anomaly_ros.timeseries.experiment import detector_params, featurize_dataset, fit_model, train_stride

    config, doc = load_config(args.config)
    _set_threads(args.threads)
    t0 = time.perf_counter()
    ds = _dataset(args, config, doc, with_tests=False)
    feats = featurize_dataset(config, ds, train_stride_s=train_stride(config, doc))
    print(
        f"features: {feats.x_train.shape[0]} train / {feats.x_calibrate.shape[0]} calibration windows x "
        f"{feats.x_train.shape[1]} features ({time.perf_counter() - t0:.1f} s)"
    )
    params = detector_params(args.detector, args.quick, args.epochs)
    model = fit_model(config, feats, args.detector, doc, params, progress=True, threads=args.threads)
    training = {
        "data": ds.meta,
        "n_train": int(feats.x_train.shape[0]),
        "n_calibrate": int(feats.x_calibrate.shape[0]),
        "total_s": time.perf_counter() - t0,
    }
    model.save(args.out, training=training)
    print(
        f"wrote {args.out} ({model.model_id}); threshold {model.detector.threshold_:.4g}; "
        f"total {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flow_anomaly_ros.cli import UserError
    from flow_anomaly_ros.evaluation.timeseries_report import write_report
    from flow_anomaly_ros.timeseries.experiment import (
        detector_params,
        evaluate_models,
        featurize_dataset,
        fit_model,
        train_stride,
    )

    names = detector_names() if args.detectors == "all" else tuple(args.detectors.split(","))
    bad = sorted(set(names) - set(detector_names()))
    if bad:
        raise UserError(f"unknown detector(s) {bad}; valid: {list(detector_names())}")
    config, doc = load_config(args.config)
    _set_threads(args.threads)
    t0 = time.perf_counter()
    ds = _dataset(args, config, doc, with_tests=True)
    feats = featurize_dataset(config, ds, train_stride_s=train_stride(config, doc), progress=True)
    print(f"data set and features ready ({time.perf_counter() - t0:.1f} s)", flush=True)
    models = {}
    for name in names:
        params = detector_params(name, args.quick)
        models[name] = fit_model(config, feats, name, doc, params, progress=True, threads=args.threads)
        print(f"{name}: fitted in {models[name].detector.fit_summary_['fit_s']:.1f} s", flush=True)
    results = evaluate_models(config, feats, models, progress=True)
    report = write_report(results, feats, models, config, ds.meta, Path(args.out))
    print(f"wrote {report}")
    return 0


def register(subparsers: Any, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="ts_command", metavar="SUBCOMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", type=Path, default=None, help="training config YAML (default: config/timeseries_model.yaml)"
        )
        p.add_argument("--seed", type=int, default=None, help="data set seed (default: from the config)")
        p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")

    p = sub.add_parser("dataset", help="write the labelled data set (train/calibrate/test npz + labels.json)")
    common(p)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--copies", type=int, default=None, help="injected test copies per severity")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("train", help="train one detector and write a model directory")
    common(p)
    p.add_argument("--detector", choices=detector_names(), default="realnvp")
    p.add_argument("--out", type=Path, required=True, help="model directory to write (atomically)")
    p.add_argument("--data", type=Path, default=None, help="data set directory from 'ts dataset' (default: build)")
    p.add_argument("--epochs", type=int, default=None, help="override the detector's epochs (realnvp, autoencoder)")
    p.add_argument("--quick", action="store_true", help="smaller model, fewer epochs (smoke runs)")
    bag_training.add_bag_train_arguments(p)  # train --bag (your own clean recordings)
    p.set_defaults(func=cmd_train)
    bag_training.add_score_command(sub)  # score a bag offline with a model

    p = sub.add_parser("evaluate", help="fit every detector on the same split and write the report")
    common(p)
    p.add_argument("--out", type=Path, required=True, help="report directory (report.md, results.json, PNGs)")
    p.add_argument("--detectors", default="all", help=f"comma-separated subset of {','.join(detector_names())}")
    p.add_argument("--data", type=Path, default=None, help="data set directory from 'ts dataset' (default: build)")
    p.add_argument("--copies", type=int, default=None, help="injected test copies per severity")
    p.add_argument("--quick", action="store_true", help="one test copy, smaller models (smoke runs)")
    p.set_defaults(func=cmd_evaluate)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
