"""Train and review a time-series model on your own rosbag2 recordings (``ts train --bag``, ``ts score``).

A vehicle engineer records clean drives (``ros2 bag record /imu/data /from_can_bus``: sensor_msgs/Imu and
ros2_socketcan's can_msgs/Frame), writes a model config with the signals of their own DBC, and trains:

    flow-anomaly ts train --bag drive1 --bag drive2 --config my_model.yaml --out models/my_car
    flow-anomaly ts score --bag drive3 --model models/my_car --out drive3_scores.csv

The bags are read with the code the demo uses (:mod:`flow_anomaly_ros.data.bag_recording`: ``BagReader`` + the
node's message conversions) and featurised by the node's own ``WindowFeaturizer``; the normaliser and detector are
fitted by :func:`flow_anomaly_ros.timeseries.experiment.fit_model`, the same code as ``ts train`` on the built-in
data. Each bag is split by time with the config's ``split.train`` / ``split.calibrate`` fractions; the bags are
assumed clean (no faults), so there is no test part (``split.test`` is ignored): check the false-alarm rate on
another clean drive with ``ts score``. A configured signal that never appears in a bag is an error naming it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.timeseries.events import KIND_CAN, KIND_IMU, Recording
from flow_anomaly_ros.timeseries.signals import PipelineConfig

DEFAULT_IMU_TOPIC = "/imu/data"
DEFAULT_CAN_TOPIC = "/from_can_bus"
MIN_CALIBRATION_WINDOWS = 100  # below this a 0.99 quantile is just the maximum: warn


class BagTrainingError(ValueError):
    """The bags do not fit the config (missing topic or signal, nothing usable); the message says what to change."""


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def imu_topic_map(specs: Sequence[str] | None, config: PipelineConfig) -> dict[str, str]:
    """``--imu-topic`` values (``TOPIC`` or ``TOPIC=SOURCE``) -> {topic: IMU source}, covering the config's sources."""
    sources = config.imu_sources
    specs = list(specs or ([DEFAULT_IMU_TOPIC] if sources else []))
    out: dict[str, str] = {}
    for spec in specs:
        topic, sep, source = spec.partition("=")
        if not sep:
            if len(sources) > 1:
                raise BagTrainingError(
                    f"the config has IMU sources {sources}: give --imu-topic TOPIC=SOURCE for each (got {spec!r})"
                )
            source = sources[0] if sources else "imu"
        out[topic] = source
    missing = sorted(set(sources) - set(out.values()))
    if missing:
        raise BagTrainingError(f"no --imu-topic for IMU source(s) {missing} of the config (TOPIC=SOURCE)")
    return {t: s for t, s in out.items() if s in sources}


def stream_topic_map(specs: Sequence[str] | None, config: PipelineConfig) -> dict[str, str]:
    """``--topic`` values (``STREAM=TOPIC``) -> {stream: topic} for the config's registry streams other than IMU and
    CAN (GNSS ...); a stream not given reads its registry default topic (``/gps/fix`` for GNSS)."""
    from flow_anomaly_ros import streams

    wanted = [n for n in config.streams if n not in ("imu", "can")]
    out = {n: "/" + streams.get(n).default_topic for n in wanted}
    for spec in specs or []:
        name, sep, topic = spec.partition("=")
        if not sep or not topic:
            raise BagTrainingError(f"--topic takes STREAM=TOPIC (e.g. gnss=/gps/fix), got {spec!r}")
        if name not in wanted:
            raise BagTrainingError(f"--topic {spec}: the config reads no {name!r} stream (it reads {wanted or 'none'})")
        out[name] = topic
    return out


def resolve_config_dbc(config: PipelineConfig, config_path: Path | None) -> PipelineConfig:
    """Check the DBC exists; a relative ``.dbc`` path not found from here is looked up next to the config file.

    A DBC file path is made absolute: the model stores it, and the node loads the model from its own directory.
    """
    from flow_anomaly_ros.timeseries.signals import ConfigError, load_dbc

    dbc = config.dbc
    if dbc.endswith(".dbc") and not Path(dbc).is_absolute():
        here = Path(dbc).resolve()
        beside = (config_path.parent / dbc).resolve() if config_path else here
        if here.is_file() or beside.is_file():
            config = dataclasses.replace(config, dbc=str(here if here.is_file() else beside))
    if config.can_messages:
        try:
            load_dbc(config.dbc)
        except FileNotFoundError as exc:
            raise BagTrainingError(f"features.dbc: {exc}") from exc
        except ConfigError as exc:
            raise BagTrainingError(str(exc)) from exc
    return config


@dataclass
class SignalCoverage:
    """Samples per configured signal in one recording (CAN: frames of its message with the DBC's length)."""

    samples: dict[str, int]
    median_period_s: dict[str, float]
    duration_s: float
    problems: list[str] = field(default_factory=list)  # e.g. DLC mismatches, ids seen

    @property
    def missing(self) -> list[str]:
        return [name for name, n in self.samples.items() if n == 0]


def signal_coverage(config: PipelineConfig, rec: Recording) -> SignalCoverage:
    """Which configured signals the recording carries, how often, and why a missing CAN signal is missing."""
    from flow_anomaly_ros import streams
    from flow_anomaly_ros.timeseries.signals import load_dbc

    ev = rec.events
    stamps = ev["stamp"]
    duration = float(stamps[-1] - stamps[0]) if len(ev) else 0.0
    is_can = (ev["kind"] == KIND_CAN) & ~ev["is_error"]
    samples: dict[str, int] = {}
    periods: dict[str, float] = {}
    problems: list[str] = []
    db = load_dbc(config.dbc) if config.can_messages else None
    for s in config.signals:
        if s.is_imu:
            src = rec.imu_sources.index(s.imu_source) if s.imu_source in rec.imu_sources else -1
            sel = (ev["kind"] == KIND_IMU) & (ev["source"] == src)
        elif not s.is_can:  # a registry stream (GNSS ...): its messages
            sel = ev["kind"] == streams.get(s.stream_name).kind
        else:
            msg = db.get_message_by_name(s.can_message)
            same_id = is_can & (ev["can_id"] == msg.frame_id) & (ev["is_extended"] == bool(msg.is_extended_frame))
            sel = same_id & (ev["dlc"] == msg.length)
            bad_dlc = Counter(int(d) for d in ev["dlc"][same_id & ~sel])
            if bad_dlc and not sel.any():
                problems.append(
                    f"{s.can_message} (0x{msg.frame_id:X}): every frame has DLC {dict(bad_dlc)}, the DBC says "
                    f"{msg.length} (wrong DBC or wrong message?)"
                )
        t = stamps[sel]
        samples[s.name] = int(sel.sum())
        periods[s.name] = float(np.median(np.diff(t))) if len(t) > 1 else math.nan
    return SignalCoverage(samples, periods, duration, problems)


def _ids_seen(rec: Recording, limit: int = 12) -> str:
    ev = rec.events[(rec.events["kind"] == KIND_CAN) & ~rec.events["is_error"]]
    ids = Counter(int(i) for i in ev["can_id"])
    shown = ", ".join(f"0x{i:X} ({n})" for i, n in ids.most_common(limit))
    return (shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")) or "none"


def load_bag_recordings(
    config: PipelineConfig,
    bags: Sequence[str | Path],
    imu_topics: dict[str, str],
    can_topic: str | None,
    stamp_source: str = "header",
    topics: dict[str, str] | None = None,
) -> list[tuple[Recording, SignalCoverage]]:
    """Read every bag; BagTrainingError naming the bag and the missing topics or signals. ``topics``: the config's
    other registry streams -> topic (default :func:`stream_topic_map`'s)."""
    from flow_anomaly_ros.data.bag_recording import BagTopicError, read_recording

    if config.can_messages and not can_topic:
        raise BagTrainingError(
            f"the config uses CAN messages {config.can_messages} but --can-topic is empty; give the can_msgs/Frame "
            "topic (ros2_socketcan publishes /from_can_bus)"
        )
    topics = stream_topic_map(None, config) if topics is None else topics
    out = []
    for bag in bags:
        try:
            rec, _ = read_recording(
                bag, imu_topics, can_topic if config.can_messages else None, stamp_source, topics=topics
            )
        except BagTopicError as exc:
            raise BagTrainingError(str(exc)) from exc
        cov = signal_coverage(config, rec)
        if cov.missing:
            details = "; ".join(cov.problems)
            can_missing = [n for n in cov.missing if config.signals[config.signal_names.index(n)].is_can]
            hint = f" CAN ids on {can_topic}: {_ids_seen(rec)}." if can_missing else ""
            raise BagTrainingError(
                f"bag {bag}: signal(s) never seen: {', '.join(cov.missing)}"
                + (f" ({details})" if details else "")
                + f".{hint} Remove them from the config's features.signals (and consistency) or record them."
            )
        out.append((rec, cov))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
def split_fractions(doc: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``split.train`` / ``split.calibrate`` of the config (fractions of each bag's duration), checked."""
    split = doc.get("split") or {}
    out = {}
    for key, default in (("train", (0.0, 0.8)), ("calibrate", (0.8, 1.0))):
        lo, hi = (float(v) for v in split.get(key, default))
        if not 0.0 <= lo < hi <= 1.0:
            raise BagTrainingError(f"split.{key} must be [start, end] fractions with 0 <= start < end <= 1")
        out[key] = (lo, hi)
    if out["train"][1] > out["calibrate"][0] and out["calibrate"][1] > out["train"][0]:
        raise BagTrainingError(
            f"split.train {list(out['train'])} and split.calibrate {list(out['calibrate'])} overlap: the threshold "
            "must be set on windows the detector was not trained on"
        )
    return out


def split_recording(rec: Recording, fractions: dict[str, tuple[float, float]]) -> dict[str, Recording]:
    """Time slices of one recording at fractions of its own span (the last slice includes the final event)."""
    st = rec.events["stamp"]
    t0, t1 = float(st[0]), float(st[-1]) + 1e-6
    return {k: rec.slice_time(t0 + a * (t1 - t0), t0 + b * (t1 - t0)) for k, (a, b) in fractions.items()}


def _status_summary(windows: list[Any]) -> tuple[Counter, Counter]:
    from flow_anomaly_ros.timeseries.pipeline import OK, STATUS_NAMES

    statuses = Counter(STATUS_NAMES[w.status] for w in windows)
    reasons = Counter(w.status_message for w in windows if w.status != OK)
    return statuses, reasons


def bag_features(
    config: PipelineConfig,
    recordings: Sequence[Recording],
    fractions: dict[str, tuple[float, float]],
    train_stride_s: float | None,
) -> tuple[Any, dict[str, Any]]:
    """``DatasetFeatures`` (no test copies) from the train / calibrate slices of every recording, and stats.

    Each slice is featurised on its own, so no window spans two bags or the train/calibrate boundary.
    """
    from flow_anomaly_ros.timeseries.experiment import DatasetFeatures
    from flow_anomaly_ros.timeseries.pipeline import featurize_recording, stack_features

    parts: dict[str, list[np.ndarray]] = {"train": [], "calibrate": []}
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    for rec in recordings:
        for key, part in split_recording(rec, fractions).items():
            windows = featurize_recording(
                config, part, stride_s=train_stride_s if key == "train" else None, imu_sources=rec.imu_sources
            )
            s, r = _status_summary(windows)
            statuses.update(s)
            reasons.update(r)
            x, _ = stack_features(windows)
            if len(x):
                parts[key].append(x)
    stats = {"window_status": dict(statuses), "top_reasons": reasons.most_common(5)}
    dim = len(_feature_names(config))
    x_train, x_cal = (np.concatenate(parts[k]) if parts[k] else np.empty((0, dim)) for k in ("train", "calibrate"))
    if len(x_train) == 0 or len(x_cal) == 0:
        why = "; ".join(f"{m} (x{n})" for m, n in reasons.most_common(5)) or "the slices are shorter than a window"
        raise BagTrainingError(
            f"no usable {'training' if len(x_train) == 0 else 'calibration'} window: every window is "
            f"{dict(statuses)}. Most common reasons: {why}. Record longer, or fix the signals' staleness_s / the "
            "split fractions in the config."
        )
    return DatasetFeatures(x_train, x_cal, []), stats


def _feature_names(config: PipelineConfig) -> list[str]:
    from flow_anomaly_ros.timeseries.features import FeatureLayout

    return FeatureLayout(config).names


def train_from_bags(
    config: PipelineConfig,
    doc: dict[str, Any],
    bags: Sequence[str | Path],
    detector: str = "realnvp",
    imu_topics: dict[str, str] | None = None,
    can_topic: str | None = DEFAULT_CAN_TOPIC,
    params: dict[str, Any] | None = None,
    stamp_source: str = "header",
    threads: int | None = 1,
    progress: bool = False,
    topics: dict[str, str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit normaliser + detector on clean bags; returns the model and the summary stored in its manifest.
    ``topics``: the config's other registry streams -> topic (default: their registry topics)."""
    from flow_anomaly_ros.timeseries.experiment import fit_model, train_stride
    from flow_anomaly_ros.timeseries.pipeline import WindowFeaturizer
    from flow_anomaly_ros.timeseries.signals import ConfigError

    t0 = time.perf_counter()
    try:
        WindowFeaturizer(config)  # messages and signals exist in the DBC, stride fits the rate
    except ConfigError as exc:
        raise BagTrainingError(str(exc)) from exc
    imu_topics = imu_topics if imu_topics is not None else imu_topic_map(None, config)
    fractions = split_fractions(doc)
    topics = stream_topic_map(None, config) if topics is None else topics
    loaded = load_bag_recordings(config, bags, imu_topics, can_topic, stamp_source, topics)
    t_read = time.perf_counter() - t0
    stride = train_stride(config, doc)
    feats, stats = bag_features(config, [r for r, _ in loaded], fractions, stride)
    model = fit_model(config, feats, detector, doc, params, progress=progress, threads=threads)
    total = sum(c.duration_s for _, c in loaded)
    signals = {
        name: {
            "samples": sum(c.samples[name] for _, c in loaded),
            "rate_hz": sum(c.samples[name] for _, c in loaded) / total if total > 0 else 0.0,
            "median_period_s": float(np.nanmedian([c.median_period_s[name] for _, c in loaded])),
        }
        for name in config.signal_names
    }
    summary = {
        "data": {
            "source": "rosbag2 (clean drives, no injected faults)",
            "bags": [str(Path(b).resolve()) for b in bags],
            "imu_topics": imu_topics,
            "can_topic": can_topic or "",
            **({"topics": topics} if topics else {}),
            "stamps": stamp_source,
            "duration_s": total,
            "split_fractions": fractions,
            "train_stride_s": stride,
        },
        "signals": signals,
        "windows": stats,
        "n_train": int(feats.x_train.shape[0]),
        "n_calibrate": int(feats.x_calibrate.shape[0]),
        "read_s": t_read,
        "total_s": time.perf_counter() - t0,
    }
    return model, summary


def _warnings(config: PipelineConfig, summary: dict[str, Any]) -> list[str]:
    out = []
    if summary["n_calibrate"] < MIN_CALIBRATION_WINDOWS:
        out.append(
            f"only {summary['n_calibrate']} calibration windows: the threshold is close to the largest clean score; "
            "record more driving"
        )
    for s in config.signals:
        period = summary["signals"][s.name]["median_period_s"]
        if math.isfinite(period) and period > s.staleness_s:
            out.append(
                f"{s.name}: median period {period:.3f} s > staleness_s {s.staleness_s} s (windows will be STALE)"
            )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Scoring a bag (offline review, e.g. the false-alarm rate on a clean drive)
# ----------------------------------------------------------------------------------------------------------------
CSV_COLUMNS = ("start_s", "end_s", "status", "score", "threshold", "is_anomaly", "data_quality_fault", "top_features")


def score_bag(
    model_dir: str | Path,
    bag: str | Path,
    imu_topics: Sequence[str] | None = None,
    can_topic: str | None = DEFAULT_CAN_TOPIC,
    stamp_source: str = "header",
    top: int = 3,
    stream_topics: Sequence[str] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Window results of the node's StreamingScorer on the bag, and a summary (alarm rate, status counts)."""
    from flow_anomaly_ros.timeseries.pipeline import OK, STATUS_NAMES, StreamingScorer, score_recording

    scorer = StreamingScorer.from_model_dir(model_dir, contributions="all" if top > 0 else "none")
    config = scorer.config
    topics = imu_topic_map(imu_topics, config)
    others = stream_topic_map(stream_topics, config)
    [(rec, cov)] = load_bag_recordings(config, [bag], topics, can_topic, stamp_source, others)
    results = score_recording(scorer, rec)
    ok = [r for r in results if r.status == OK]
    alarms = [r.is_anomaly for r in results]
    events = sum(1 for i, a in enumerate(alarms) if a and (i == 0 or not alarms[i - 1]))
    hours = cov.duration_s / 3600.0
    scores = np.array([r.score for r in ok])
    summary = {
        "model": scorer.model_id,
        "threshold": scorer.threshold,
        "duration_s": cov.duration_s,
        "windows": len(results),
        "status": dict(Counter(STATUS_NAMES[r.status] for r in results)),
        "ok_windows": len(ok),
        "alarm_windows": int(sum(alarms)),
        "alarm_window_rate": sum(alarms) / len(ok) if ok else math.nan,
        "alarm_events": events,
        "alarm_events_per_hour": events / hours if hours > 0 else math.nan,
        "data_quality_windows": int(sum(r.data_quality_fault for r in results)),
        "score_quantiles": {q: float(np.quantile(scores, q)) for q in (0.5, 0.99, 1.0)} if len(scores) else {},
    }
    return results, summary


def top_features(result: Any, k: int) -> str:
    """``name=contribution`` of the ``k`` largest contributions, ``;``-separated ('' when none)."""
    if not result.contributions or k <= 0:
        return ""
    c = np.asarray(result.contributions)
    idx = np.argsort(-c, kind="stable")[:k]
    return ";".join(f"{result.feature_names[i]}={c[i]:.4g}" for i in idx)


def write_scores_csv(path: str | Path, results: Sequence[Any], top: int = 3) -> Path:
    """One row per window; floats written in full precision (``repr``) so the file reproduces the scores exactly."""
    import io

    from flow_anomaly_ros.model_store import atomic_write_bytes
    from flow_anomaly_ros.timeseries.pipeline import STATUS_NAMES

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        w.writerow(
            [
                repr(r.start_s),
                repr(r.end_s),
                STATUS_NAMES[r.status],
                repr(r.score),
                repr(r.threshold),
                int(r.is_anomaly),
                int(r.data_quality_fault),
                top_features(r, top),
            ]
        )
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# CLI (registered in ``flow-anomaly ts`` by :mod:`flow_anomaly_ros.timeseries.cli`)
# ----------------------------------------------------------------------------------------------------------------
def _user_error(exc: Exception) -> Exception:
    from flow_anomaly_ros.cli import UserError

    return UserError(str(exc))


def _add_bag_inputs(p: argparse.ArgumentParser, bag_help: str, repeat: bool) -> None:
    p.add_argument(
        "--bag", type=Path, action="append" if repeat else "store", default=None, required=not repeat, help=bag_help
    )
    p.add_argument(
        "--imu-topic",
        action="append",
        default=None,
        metavar="TOPIC[=SOURCE]",
        help=f"sensor_msgs/Imu topic (default {DEFAULT_IMU_TOPIC}); repeat with =SOURCE for configs with several IMUs",
    )
    p.add_argument(
        "--can-topic",
        default=DEFAULT_CAN_TOPIC,
        help=f"can_msgs/Frame topic as ros2_socketcan publishes it (default {DEFAULT_CAN_TOPIC}; '' = none)",
    )
    p.add_argument(
        "--topic",
        action="append",
        default=None,
        metavar="STREAM=TOPIC",
        help="topic of another input stream the config reads (e.g. gnss=/gps/fix; default: the stream's registry "
        "topic, /gps/fix for gnss)",
    )
    p.add_argument(
        "--stamps",
        choices=("header", "bag"),
        default="header",
        help="time of a message: its header stamp (the node's stamp_source=header) or the bag's record time "
        "(stamp_source=receipt, for drivers that leave stamps zero)",
    )


def cmd_train_bag(args: argparse.Namespace) -> int:
    """``ts train --bag``: train on clean recordings, write the model dir, print a short summary."""
    from flow_anomaly_ros.timeseries.cli_common import load_config
    from flow_anomaly_ros.timeseries.experiment import detector_params

    if getattr(args, "data", None):
        raise _user_error(ValueError("--data and --bag are alternatives: give one"))
    config, doc = load_config(args.config)
    t0 = time.perf_counter()
    try:
        config = resolve_config_dbc(config, args.config)
        topics = imu_topic_map(args.imu_topic, config)
        others = stream_topic_map(args.topic, config)
        params = detector_params(args.detector, args.quick, args.epochs)
        model, summary = train_from_bags(
            config,
            doc,
            args.bag,
            args.detector,
            topics,
            args.can_topic,
            params,
            args.stamps,
            threads=args.threads,
            progress=True,
            topics=others,
        )
    except BagTrainingError as exc:
        raise _user_error(exc) from exc
    summary["total_s"] = time.perf_counter() - t0
    model.save(args.out, training=summary)
    sig = summary["signals"]
    print(f"bags: {len(args.bag)}, {summary['data']['duration_s']:.1f} s of driving")
    print(
        f"windows: {summary['n_train']} train / {summary['n_calibrate']} calibration "
        f"(all windows by status: {summary['windows']['window_status']})"
    )
    print("signals seen: " + ", ".join(f"{n} {v['rate_hz']:.0f} Hz" for n, v in sig.items()))
    print("signals missing: none")
    if config.dbc.endswith(".dbc"):
        print(f"DBC: {config.dbc} (stored in the model: keep the DBC at this path on the vehicle too)")
    used = sum(b - a for a, b in summary["data"]["split_fractions"].values())
    if used < 0.999:
        print(
            f"note: split.train + split.calibrate use {100 * used:.0f} % of each bag; split.test is ignored (bags are "
            "assumed clean): set split.calibrate to end at 1.0 to use all of it"
        )
    for w in _warnings(config, summary):
        print(f"warning: {w}")
    th = doc.get("threshold", {})
    how = f"quantile {th.get('quantile', 0.99)}" if th.get("method", "quantile") == "quantile" else th["method"]
    print(
        f"wrote {args.out} ({model.model_id}); threshold {model.detector.threshold_:.4g} ({how} of the clean "
        f"calibration scores); total {summary['total_s']:.1f} s"
    )
    print(f"next: flow-anomaly ts score --bag OTHER_CLEAN_DRIVE --model {args.out} --out scores.csv")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """``ts score``: score a bag with a model offline (the node's core), one CSV row per window."""
    from flow_anomaly_ros.timeseries.experiment import torch_threads

    try:
        with torch_threads(args.threads):
            results, s = score_bag(
                args.model, args.bag, args.imu_topic, args.can_topic, args.stamps, args.top, args.topic
            )
    except BagTrainingError as exc:
        raise _user_error(exc) from exc
    if args.out:
        write_scores_csv(args.out, results, args.top)
        print(f"wrote {args.out} ({len(results)} windows)")
    print(f"model {s['model']}: threshold {s['threshold']:.4g}")
    print(f"{s['duration_s']:.1f} s, {s['windows']} windows by status: {s['status']}")
    q = ", ".join(f"q{k:g} {v:.4g}" for k, v in s["score_quantiles"].items())
    print(
        f"alarms: {s['alarm_windows']} of {s['ok_windows']} scored windows ({100 * s['alarm_window_rate']:.2f} %), "
        f"{s['alarm_events']} alarm events ({s['alarm_events_per_hour']:.1f} per hour); "
        f"data-quality windows: {s['data_quality_windows']}; scores: {q}"
    )
    return 0


def add_bag_train_arguments(train_parser: argparse.ArgumentParser) -> None:
    """``--bag`` & co. of ``ts train``; ``ts train`` runs :func:`cmd_train_bag` when ``--bag`` is given."""
    _add_bag_inputs(
        train_parser,
        "clean rosbag2 recording (directory, .mcap or .db3) to train on instead of the built-in data set; repeat "
        "for several drives. Each is split by time with the config's split.train / split.calibrate fractions",
        repeat=True,
    )


def add_score_command(sub: Any) -> None:
    """The ``ts score`` subcommand (lazy imports: no torch at --help)."""
    p = sub.add_parser("score", help="score a bag offline with a model (one CSV row per window; false-alarm rate)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    _add_bag_inputs(p, "rosbag2 recording to score (directory, .mcap or .db3)", repeat=False)
    p.add_argument("--model", type=Path, required=True, help="model directory from 'ts train'")
    p.add_argument("--out", type=Path, default=None, help="CSV to write (one row per window)")
    p.add_argument("--top", type=int, default=3, help="top contributing features per window in the CSV (0 = none)")
    p.set_defaults(func=cmd_score)
