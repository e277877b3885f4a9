"""Training and evaluation runs: featurise the split once, fit detectors, calibrate, score the test copies.

Every feature vector comes from :class:`~flow_anomaly_ros.timeseries.pipeline.WindowFeaturizer` and every test
score from :meth:`~flow_anomaly_ros.timeseries.pipeline.TimeseriesModel.score_windows` (one window at a time), the
code the streaming scorer and the node run, so the evaluation measures exactly what the node would publish.

Example::

    config, doc = default_config()
    ds = build_dataset(config, **dataset_params(doc))
    feats = featurize_dataset(config, ds, train_stride_s=0.05)
    model = fit_model(config, feats, "realnvp", doc)
    results = evaluate_models(config, feats, {"realnvp": model})
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flow_anomaly_ros.data.timeseries_dataset import TestCopy, TimeseriesDataset
from flow_anomaly_ros.evaluation.timeseries_metrics import Sequence_, evaluate_sequences
from flow_anomaly_ros.timeseries.detectors import make_detector
from flow_anomaly_ros.timeseries.normalise import RobustNormaliser
from flow_anomaly_ros.timeseries.pipeline import (
    MODEL_ERROR,
    OK,
    WARMING_UP,
    TimeseriesModel,
    WindowFeatures,
    featurize_recording,
    stack_features,
)
from flow_anomaly_ros.timeseries.signals import PipelineConfig

# --quick detector sizes (smoke runs, the CI demo), the one list for `ts train/evaluate`, `fleet train` and the demo
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    "realnvp": {"epochs": 8, "num_layers": 4, "hidden_features": 32},
    "autoencoder": {"epochs": 10},
    "ocsvm": {"max_train_samples": 1000},
}


def detector_params(detector: str, quick: bool, epochs: int | None = None) -> dict[str, Any]:
    """Parameter overrides of one training run: the --quick sizes of ``detector`` and an --epochs override."""
    params = dict(QUICK_OVERRIDES.get(detector, {})) if quick else {}
    if epochs is not None:
        params["epochs"] = epochs
    return params


def train_stride(config: PipelineConfig, doc: dict[str, Any]) -> float:
    """Window stride of the training split: ``split.train_stride_s`` of the config, else the pipeline's stride."""
    return float((doc.get("split") or {}).get("train_stride_s", config.stride_s))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (small MLPs/flows train faster on 1-2 threads than on many)."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def dataset_params(doc: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``build_dataset`` from the config's ``dataset`` and ``split`` sections."""
    from flow_anomaly_ros.data.injection import FAULT_TYPES

    d = doc.get("dataset", {})
    split = doc.get("split", {})
    params: dict[str, Any] = {
        "seed": int(d.get("seed", 7)),
        "test_copies": int(d.get("test_copies", 4)),
        "severities": tuple(d.get("severities", ("clear", "subtle"))),
        "split": {k: tuple(split[k]) for k in ("train", "calibrate", "test") if k in split} or None,
    }
    if d.get("faults"):  # a subset of the fault types (default: every type once per test copy)
        bad = sorted(set(d["faults"]) - set(FAULT_TYPES))
        if bad:
            raise ValueError(f"dataset.faults: unknown fault type(s) {bad}; valid: {list(FAULT_TYPES)}")
        params["faults"] = tuple(d["faults"])
    return params


@dataclass
class TestFeatures:
    copy: TestCopy
    windows: list[WindowFeatures]


@dataclass
class DatasetFeatures:
    x_train: np.ndarray
    x_calibrate: np.ndarray
    tests: list[TestFeatures]
    timings: dict[str, float] = field(default_factory=dict)


def featurize_dataset(
    config: PipelineConfig, ds: TimeseriesDataset, train_stride_s: float | None = None, progress: bool = False
) -> DatasetFeatures:
    """Features of the train/calibrate recordings (clean) and of every window of every test copy."""
    t0 = time.perf_counter()
    x_train, _ = stack_features(featurize_recording(config, ds.train, stride_s=train_stride_s))
    x_cal, _ = stack_features(featurize_recording(config, ds.calibrate))
    t1 = time.perf_counter()
    copies = ds.tests
    if progress:
        from tqdm import tqdm

        copies = tqdm(copies, desc="featurise test copies", unit="copy")
    tests = [TestFeatures(c, featurize_recording(config, c.recording)) for c in copies]
    t2 = time.perf_counter()
    return DatasetFeatures(x_train, x_cal, tests, {"featurise_train_s": t1 - t0, "featurise_test_s": t2 - t1})


def fit_model(
    config: PipelineConfig,
    feats: DatasetFeatures,
    name: str,
    doc: dict[str, Any],
    params: dict[str, Any] | None = None,
    progress: bool = False,
    threads: int | None = 1,
) -> TimeseriesModel:
    """Fit the normaliser (train windows) and a detector, and calibrate its threshold on clean windows."""
    norm = RobustNormaliser.fit(feats.x_train)
    det_params = {**(doc.get("detectors", {}).get(name) or {}), **(params or {})}
    det = make_detector(name, **det_params)
    th = doc.get("threshold", {})
    t0 = time.perf_counter()
    with torch_threads(threads):
        det.fit(norm.transform(feats.x_train), progress=progress)
        det.calibrate(
            norm.transform(feats.x_calibrate),
            method=th.get("method", "quantile"),
            quantile=float(th.get("quantile", 0.99)),
        )
    det.fit_summary_["fit_s"] = time.perf_counter() - t0
    return TimeseriesModel(config, norm, det)


def score_copy(model: TimeseriesModel, tf: TestFeatures, threads: int | None = 1) -> Sequence_:
    """Per-window arrays of one test copy, scored window by window (as the streaming scorer does)."""
    w = tf.windows
    status = np.array([x.status for x in w])
    score = np.full(len(w), np.nan)
    ok = np.flatnonzero(status == OK)
    if len(ok):
        with torch_threads(threads):
            score[ok] = model.score_windows(np.stack([w[i].features for i in ok]))
    quality = np.array([x.data_quality_fault for x in w])
    alarm = (np.nan_to_num(score, nan=-np.inf) > model.detector.threshold_) | quality
    valid = (status != WARMING_UP) & (status != MODEL_ERROR)
    return Sequence_(
        start_s=np.array([x.start_s for x in w]),
        end_s=np.array([x.end_s for x in w]),
        score=score,
        alarm=alarm,
        quality=quality,
        valid=valid,
        faults=tf.copy.labels,
    )


def evaluate_models(
    config: PipelineConfig, feats: DatasetFeatures, models: dict[str, TimeseriesModel], progress: bool = False
) -> dict[str, Any]:
    """Metrics per detector and severity; also returns the scored sequences (for plots)."""
    results: dict[str, Any] = {"metrics": {}, "sequences": {}, "score_s": {}}
    severities = sorted({t.copy.severity for t in feats.tests}, key=lambda s: (s != "clear", s))
    for name, model in models.items():
        t0 = time.perf_counter()
        seqs = [score_copy(model, tf) for tf in feats.tests]
        results["score_s"][name] = time.perf_counter() - t0
        results["sequences"][name] = seqs
        results["metrics"][name] = {
            sev: evaluate_sequences(
                [s for s, tf in zip(seqs, feats.tests) if tf.copy.severity == sev], config.window_s, config.stride_s
            )
            for sev in severities
        }
        if progress:
            auc = {k: round(float(v["roc_auc"]), 3) for k, v in results["metrics"][name].items()}
            print(f"{name}: ROC-AUC {auc}", flush=True)
    return results
