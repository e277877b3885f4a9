"""``flow-anomaly fleet train``: ``ts train --bag`` over many drives, feature extraction on Ray, the fit here.

Per bag (one Ray task): ``ts train --bag``'s own reading and featurisation
(:func:`~flow_anomaly_ros.timeseries.bag_training.load_bag_recordings` and
:func:`~flow_anomaly_ros.timeseries.bag_training.bag_features` on that one bag). The driver concatenates the
per-bag train / calibration features in input order, which is exactly what ``bag_features`` does over all bags
(each bag's slices are featurised on their own: no window spans two bags), and fits normaliser + detector with
:func:`~flow_anomaly_ros.timeseries.experiment.fit_model` on one machine.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def bag_training_features(
    config: Any,
    fractions: dict[str, tuple[float, float]],
    stride_s: float,
    bag: str,
    imu_topics: dict[str, str],
    can_topic: str | None,
    stamp_source: str = "header",
) -> dict[str, Any]:
    """One bag's train / calibration feature matrices and window stats (the serial code, on one bag)."""
    from flow_anomaly_ros.timeseries.bag_training import bag_features, load_bag_recordings

    [(rec, cov)] = load_bag_recordings(config, [bag], imu_topics, can_topic, stamp_source)
    feats, stats = bag_features(config, [rec], fractions, stride_s)
    return {
        "bag": bag,
        "x_train": feats.x_train,
        "x_calibrate": feats.x_calibrate,
        "stats": stats,
        "duration_s": cov.duration_s,
        "samples": cov.samples,
    }


def _task(*args: Any) -> dict[str, Any]:
    from flow_anomaly_ros.timeseries.bag_training import BagTrainingError

    try:
        return bag_training_features(*args)
    except (BagTrainingError, FileNotFoundError, OSError, RuntimeError) as exc:
        return {"bag": args[3], "error": f"{type(exc).__name__}: {exc}"}


def fleet_features(
    config: Any,
    doc: dict[str, Any],
    bags: Sequence[str],
    imu_topics: dict[str, str],
    can_topic: str | None,
    stamp_source: str = "header",
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """(DatasetFeatures over every bag in input order, per-bag parts); BagTrainingError listing failed bags."""
    import ray
    from tqdm import tqdm

    from flow_anomaly_ros.fleet.engine import connect
    from flow_anomaly_ros.timeseries.bag_training import BagTrainingError, split_fractions
    from flow_anomaly_ros.timeseries.experiment import DatasetFeatures, train_stride

    fractions = split_fractions(doc)
    stride = train_stride(config, doc)
    owned = connect(address, workers)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_task)
        config_ref = ray.put(config)
        refs = [task.remote(config_ref, fractions, stride, str(b), imu_topics, can_topic, stamp_source) for b in bags]
        index = {ref: i for i, ref in enumerate(refs)}
        parts: list[dict[str, Any] | None] = [None] * len(refs)
        with tqdm(total=len(refs), unit="bag", disable=not progress, desc="features") as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    try:
                        parts[index[ref]] = ray.get(ref)
                    except Exception as exc:  # worker died
                        parts[index[ref]] = {"bag": str(bags[index[ref]]), "error": f"worker failed: {exc}"}
                    bar.update(1)
    finally:
        if owned:
            ray.shutdown()
    done = [p for p in parts if p is not None]
    failed = [p for p in done if "error" in p]
    if failed:
        raise BagTrainingError("; ".join(f"bag {p['bag']}: {p['error']}" for p in failed))
    feats = DatasetFeatures(
        np.concatenate([p["x_train"] for p in done]), np.concatenate([p["x_calibrate"] for p in done]), []
    )
    return feats, done


def train_fleet(
    config: Any,
    doc: dict[str, Any],
    bags: Sequence[str],
    detector: str,
    imu_topics: dict[str, str],
    can_topic: str | None,
    params: dict[str, Any] | None = None,
    stamp_source: str = "header",
    threads: int | None = 1,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Fit on the features of every bag (extracted on Ray); returns the model and its manifest summary."""
    from flow_anomaly_ros.timeseries.bag_training import split_fractions
    from flow_anomaly_ros.timeseries.experiment import fit_model

    t0 = time.perf_counter()
    feats, parts = fleet_features(
        config, doc, bags, imu_topics, can_topic, stamp_source, address, workers, progress=progress
    )
    t_features = time.perf_counter() - t0
    model = fit_model(config, feats, detector, doc, params, progress=progress, threads=threads)
    statuses: Counter = Counter()
    for p in parts:
        statuses.update(p["stats"]["window_status"])
    summary = {
        "data": {
            "source": "rosbag2 (clean drives, no injected faults); features extracted per bag on Ray",
            "bags": [str(Path(b).resolve()) for b in bags],
            "imu_topics": imu_topics,
            "can_topic": can_topic or "",
            "stamps": stamp_source,
            "duration_s": sum(p["duration_s"] for p in parts),
            "split_fractions": split_fractions(doc),
        },
        "windows": {"window_status": dict(statuses)},
        "n_train": int(feats.x_train.shape[0]),
        "n_calibrate": int(feats.x_calibrate.shape[0]),
        "features_s": t_features,
        "total_s": time.perf_counter() - t0,
    }
    return model, summary
