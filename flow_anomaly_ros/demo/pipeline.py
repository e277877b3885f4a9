"""``make demo`` / ``flow-anomaly demo run``: the whole system on the embedded defaults, end to end.

Steps (each prints progress; cached artefacts are reused, so a warm run takes seconds plus the replay):
1. the demo bag (``demo.recording``), cached as ``<cache>/bag-<hash>``;
2. the time-series models (RealNVP and the paper's baselines), cached as ``<cache>/ts-<hash>-<detector>``;
3. the mobilenet DeepLabV3 segmentation model with the anomaly class, fine-tuned on generated street scenes with
   pasted anomaly patches and exported to ONNX, cached as ``<cache>/seg-<hash>``;
4. offline evaluation (every detector, camera frames) on the bag, without DDS;
5. live run: the two nodes start as processes, the bag is replayed over DDS, their outputs are recorded;
6. the report, ``demo/report/index.html`` with PNGs, and where to find it.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flow_anomaly_ros.demo.config import DemoConfig, cache_dir

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORT_DIR = Path("demo/report")


class Progress:
    """Stage headers with timings ('[2/6] ...'), and tqdm bars for the long loops inside a stage."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.index = 0
        self.stream = stream or sys.stderr
        self.timings: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._stage_t0: float | None = None
        self._stage: str | None = None

    def stage(self, title: str, cached: bool | None = None) -> None:
        self.end()
        self.index += 1
        note = "" if cached is None else (" (cached)" if cached else " (not cached: building)")
        print(f"[{self.index}/{self.total}] {title}{note}", file=self.stream, flush=True)
        self._stage, self._stage_t0 = title + note, time.perf_counter()

    def info(self, text: str) -> None:
        print(f"      {text}", file=self.stream, flush=True)

    def end(self) -> None:
        if self._stage is not None and self._stage_t0 is not None:
            dt = time.perf_counter() - self._stage_t0
            self.timings.append({"step": self._stage, "seconds": round(dt, 1)})
            print(f"      done in {dt:.1f} s", file=self.stream, flush=True)
        self._stage = None

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._t0


def _build_cached(path: Path, build: Callable[[Path], Any], no_cache: bool, tmp: Path | None = None) -> bool:
    """Build ``path`` atomically via ``build(tmp)`` unless it exists; returns True when it was cached.

    ``tmp`` defaults to ``<path>.partial`` beside it (same file system, so the final rename is atomic).
    """
    if path.exists() and not no_cache:
        return True
    tmp = tmp or path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    build(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return False


def ensure_bag(cfg: DemoConfig, cache: Path, no_cache: bool = False, progress: Progress | None = None) -> Path:
    from flow_anomaly_ros.demo.recording import make_demo_bag

    path = cache / f"bag-{cfg.bag_key()}"

    def build(tmp: Path) -> None:
        make_demo_bag(tmp, cfg, progress=(lambda s, f: progress.info(s)) if progress else None)

    # rosbag2 names the storage file after the bag directory: build it under its final name (in a scratch
    # directory beside it) so that the cached bag holds bag-<hash>.mcap, not bag-<hash>.partial.mcap
    scratch = cache / ".partial"
    _build_cached(path, build, no_cache, tmp=scratch / path.name)
    with contextlib.suppress(OSError):  # left only when another build is in progress there
        scratch.rmdir()
    return path


def _train_segmentation_entry(cfg: DemoConfig, seg: Path, no_cache: bool) -> str:
    """Child-process entry: build the segmentation cache entry (module level so that 'spawn' can pickle it)."""
    from flow_anomaly_ros.demo import training

    _build_cached(seg, lambda tmp: training.train_segmentation(cfg, tmp, progress=False), no_cache)
    return str(seg)


def ensure_models(cfg: DemoConfig, cache: Path, no_cache: bool = False, progress: Progress | None = None) -> Any:
    """Train (or reuse) every model the demo needs; returns DemoModels.

    On a cold cache the segmentation fine-tuning (torch, multi-threaded) runs in a child process while this one
    computes the time-series features and fits the detectors (mostly single-threaded Python): on two cores the
    two overlap instead of queueing.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from flow_anomaly_ros.demo import training
    from flow_anomaly_ros.demo.cores import DemoModels

    say = progress.info if progress else (lambda text: None)
    seg = cache / f"seg-{cfg.seg_model_key()}"
    pool = None
    future = None
    if seg.exists() and not no_cache:
        say(f"segmentation model {cfg.seg_backbone}: cached -> {seg}")
    else:
        say(
            f"segmentation model {cfg.seg_backbone}: fine-tuning {cfg.seg_train_steps} steps in a background "
            f"process -> {seg}"
        )
        pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        future = pool.submit(_train_segmentation_entry, cfg, seg, no_cache)
    try:
        ts_models = {}
        for det in (cfg.detector, *cfg.baselines):
            if not training.detector_available(det):
                say(f"time-series detector {det}: not available in this installation, skipped")
                continue
            path = cache / f"ts-{cfg.ts_model_key(det)}-{det}"
            cached = path.exists() and not no_cache
            say(f"time-series detector {det}: {'cached' if cached else 'training'} -> {path}")
            t0 = time.perf_counter()
            _build_cached(path, lambda tmp, d=det: training.train_timeseries(cfg, d, tmp), no_cache)
            if not cached:
                say(f"time-series detector {det}: trained in {time.perf_counter() - t0:.0f} s")
            ts_models[det] = path
        if future is not None:
            t0 = time.perf_counter()
            say("waiting for the segmentation fine-tuning ...")
            future.result()
            say(f"segmentation model ready (waited {time.perf_counter() - t0:.0f} s)")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return DemoModels(ts_models=ts_models, seg_model=seg, deployed_detector=cfg.detector)


DEFAULT_MODEL_DIRS = {"camera": "seg_mobilenet", "timeseries": "ts_realnvp"}  # config/*.yaml model_path / model_dir


def install_default_models(models: Any, models_root: Path | None = None) -> dict[str, Path]:
    """Copy the demo's deployed models to where the shipped node configs look (``models/seg_mobilenet``,
    ``models/ts_realnvp``), so that ``ros2 launch ... replay.launch.py bag:=<demo bag>`` and ``flow-anomaly up`` find
    working models without a path. Each copy is atomic (a temp dir renamed into place); returns where they went."""
    from flow_anomaly_ros.segmentation.base_model import models_dir

    root = models_root or models_dir()
    sources = {"camera": models.seg_model, "timeseries": models.ts_models.get(models.deployed_detector)}
    out: dict[str, Path] = {}
    for role, src in sources.items():
        if src is None or not Path(src).is_dir():
            continue
        dst = root / DEFAULT_MODEL_DIRS[role]
        tmp = dst.with_name(dst.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
        out[role] = dst
    return out


def models_for_bag(bag: Path, cache: Path | None = None) -> Any:
    """The cached models that belong to a demo bag (from the config stored in its ground truth)."""
    from flow_anomaly_ros.demo.cores import DemoModels
    from flow_anomaly_ros.demo.recording import load_ground_truth

    cfg = DemoConfig(**_config_from_dict(load_ground_truth(bag)["config"]))
    cache = cache or cache_dir()
    ts = {d: cache / f"ts-{cfg.ts_model_key(d)}-{d}" for d in (cfg.detector, *cfg.baselines)}
    ts = {d: p for d, p in ts.items() if p.exists() or d == cfg.detector}  # baselines are optional
    seg = cache / f"seg-{cfg.seg_model_key()}"
    missing = [str(p) for p in (*ts.values(), seg) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            "models for this bag are not in the cache: " + ", ".join(missing) + " (run `flow-anomaly demo run` "
            "once, or pass --ts-model/--seg-model)"
        )
    return DemoModels(ts_models=ts, seg_model=seg, deployed_detector=cfg.detector)


def _config_from_dict(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    for k, v in out.items():
        if isinstance(v, list):
            out[k] = tuple(v)
    return out


def run_demo(
    cfg: DemoConfig,
    report_dir: Path = DEFAULT_REPORT_DIR,
    cache: Path | None = None,
    no_cache: bool = False,
    live: bool = True,
    install_models: bool = False,
) -> Path:
    """Run the whole demo and return the report's index.html.

    ``install_models`` copies the trained camera and RealNVP models to the node configs' default paths
    (:func:`install_default_models`; ``make demo`` does, tests with their own cache do not)."""
    from tqdm import tqdm

    from flow_anomaly_ros.demo.evaluate import agreement, evaluate_live, evaluate_offline
    from flow_anomaly_ros.demo.recording import load_ground_truth
    from flow_anomaly_ros.demo.report import write_report

    cache = cache or cache_dir()
    p = Progress(5 if live else 4)  # bag, models, offline, [live], report
    bag_path = cache / f"bag-{cfg.bag_key()}"
    p.stage(f"demo bag -> {bag_path}", cached=bag_path.exists() and not no_cache)
    bag = ensure_bag(cfg, cache, no_cache, p)
    truth = load_ground_truth(bag)
    p.info(f"{truth['end_s'] - truth['start_s']:.0f} s, messages: {truth['message_counts']}")

    p.stage("models (time series + segmentation)")
    models = ensure_models(cfg, cache, no_cache, p)
    if install_models:
        for role, where in install_default_models(models).items():
            p.info(f"{role} model installed for the launch files' defaults -> {where}")

    p.stage("offline evaluation (the nodes' cores on the bag, no DDS)")
    n_frames = int(truth["message_counts"].get(truth["topics"]["camera"], 0))
    with tqdm(total=n_frames, desc="      camera frames", unit="frame", file=sys.stderr, leave=False) as bar:
        offline = evaluate_offline(bag, models, progress=lambda s, n: bar.update(n) if n else p.info(s))
    live_ev = None
    agree = None
    if live:
        p.stage(f"live run: nodes as processes, bag replayed over DDS at {cfg.replay_rate}x, outputs recorded")
        total = sum(truth["message_counts"].values())
        with tqdm(total=total, desc="      replay", unit="msg", file=sys.stderr, leave=False) as bar:
            live_ev = evaluate_live(
                bag,
                models,
                rate=cfg.replay_rate,
                progress=bar,
                log_dir=report_dir / "node_logs",
                outputs_bag=report_dir / "live_outputs",
                expected_windows=len(offline.detectors[models.deployed_detector])
                if models.deployed_detector in offline.detectors
                else None,
            )
        agree = agreement(offline, live_ev)
        p.info(f"agreement: {agree}")
    p.stage(f"report -> {report_dir}/index.html")
    # the table in the report covers the steps before it (the report's own time is printed, not tabled)
    timings = [*p.timings, {"step": "total before the report", "seconds": round(p.elapsed_s, 1)}]
    default_cache = cache == cache_dir()
    reproduce = "" if default_cache else f" --cache-dir {cache}"
    index = write_report(report_dir, bag, offline, live_ev, agree, timings, reproduce=reproduce)
    p.end()
    print(f"\nReport: {index.resolve()}", flush=True)
    print(f"Total {p.elapsed_s:.0f} s. Cache: {cache}", flush=True)
    return index
