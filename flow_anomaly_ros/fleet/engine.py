"""Run a fleet job on Ray: one task per bag, models in the object store once, results stored per bag.

Resumability: a bag's result is ``OUT/results/<bag hash>-<models hash>.json``, written atomically by the driver as
soon as its task returns. A re-run skips every bag that has one; a killed driver loses only the bags in flight
(Ray ends a dead driver's tasks). Error rows (missing / truncated / corrupt bag, a worker that died) are stored
too, for the report, but are retried by the next run.

Models: each model directory is packed (tar) once and ``ray.put`` once; a task gets the reference inside a list
(not resolved by Ray) and its worker unpacks it into a temporary directory on the first bag only, so a worker that
runs 100 bags fetches and unpacks the models once.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flow_anomaly_ros.fleet.bag_eval import BagEvalError, EvalOptions, FleetModels, error_result, evaluate_bag
from flow_anomaly_ros.fleet.inputs import BagJob, bag_hash, models_hash

RESULTS_DIR = "results"


@dataclass
class RunSummary:
    """What one fleet run did (the driver's side)."""

    results: list[dict[str, Any]]
    done: int = 0  # evaluated in this run
    skipped: int = 0  # stored by an earlier run
    failed: int = 0
    wall_s: float = 0.0
    submit_overhead_s: float = 0.0  # driver time spent hashing, submitting and storing (not waiting)
    models_hash: str = ""
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Result store
# ----------------------------------------------------------------------------------------------------------------
def result_path(out: Path, bag_h: str, models_h: str) -> Path:
    return out / RESULTS_DIR / f"{bag_h[:20]}-{models_h[:20]}.json"


def load_result(path: Path) -> dict[str, Any] | None:
    """A stored result, or None when absent or unreadable (a partial file cannot exist: writes are atomic)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def store_result(path: Path, result: dict[str, Any]) -> None:
    from flow_anomaly_ros.model_store import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)


# ----------------------------------------------------------------------------------------------------------------
# Models through the object store
# ----------------------------------------------------------------------------------------------------------------
def pack_dir(path: str | Path) -> bytes:
    """A model directory as tar bytes (no compression: weights do not compress and unpacking stays fast)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname="model")
    return buf.getvalue()


_UNPACKED: dict[str, str] = {}  # models hash + role -> directory (per worker process)


def _unpack(key: str, ref_box: list[Any] | None) -> str | None:
    """The model directory for ``key`` in this worker, fetched from the object store and unpacked once."""
    if ref_box is None:
        return None
    if key not in _UNPACKED:
        import ray

        data = ray.get(ref_box[0])
        root = tempfile.mkdtemp(prefix="fleet-model-")
        atexit.register(shutil.rmtree, root, True)  # the worker's copy goes when the worker does
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(root, filter="data")  # refuses absolute paths, links out of the tree, devices
        _UNPACKED[key] = os.path.join(root, "model")
    return _UNPACKED[key]


def _task(job: dict[str, str], models: dict[str, Any], boxes: dict[str, Any], options: dict[str, Any]) -> dict:
    """The Ray task: unpack the models (once per worker), then the same per-bag function as a serial run."""
    from flow_anomaly_ros.timeseries.experiment import torch_threads

    bag_job = BagJob(**job)
    try:
        key = models["hash"]
        fm = FleetModels(**{**models["models"], "ts_model": _unpack(key + ":ts", boxes["ts"])})
        fm = replace(fm, seg_model=_unpack(key + ":seg", boxes.get("seg")))
        with torch_threads(1):
            return evaluate_bag(bag_job, fm, EvalOptions(**options))
    except BagEvalError as exc:
        return error_result(bag_job, str(exc))
    except Exception as exc:  # a bag must never stop the fleet: its row says what happened
        return error_result(bag_job, f"{type(exc).__name__}: {exc}")


def serial_result(job: BagJob, models: FleetModels, options: EvalOptions) -> dict[str, Any]:
    """The serial path: the same per-bag function (and the same error rows) without Ray."""
    try:
        return evaluate_bag(job, models, options)
    except BagEvalError as exc:
        return error_result(job, str(exc))
    except Exception as exc:
        return error_result(job, f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------------------------
# Ray session
# ----------------------------------------------------------------------------------------------------------------
def connect(address: str | None, workers: int | None) -> bool:
    """Use the Ray session already open in this process, or connect to ``address``, or start a local one.

    Returns True when this call started/connected it (and so should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return True


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------
def plan(jobs: Sequence[BagJob], models: FleetModels, options: EvalOptions, out: Path) -> tuple[str, list[tuple]]:
    """(models hash, [(job, bag hash or None, stored result or None)]) for every job."""
    settings = {**asdict(models), **options.as_dict(), "ts_model": "", "seg_model": ""}  # paths: not part of it
    m_hash = models_hash([models.ts_model, models.seg_model], settings)
    rows = []
    for job in jobs:
        b_hash = bag_hash(job.path)
        stored = load_result(result_path(out, b_hash, m_hash)) if b_hash else None
        if stored is not None and stored.get("status") != "ok":
            stored = None  # error rows are retried
        rows.append((job, b_hash, stored))
    return m_hash, rows


def run_fleet(
    jobs: Sequence[BagJob],
    models: FleetModels,
    out: str | Path,
    options: EvalOptions | None = None,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Evaluate every job on Ray (see the module docstring); results in input order."""
    import ray
    from tqdm import tqdm

    options = options or EvalOptions()
    out = Path(out)
    t0 = time.perf_counter()
    m_hash, rows = plan(jobs, models, options, out)
    results: list[dict[str, Any] | None] = [stored for _, _, stored in rows]
    summary = RunSummary([], skipped=sum(r is not None for r in results), models_hash=m_hash)
    todo = [i for i, r in enumerate(results) if r is None]
    overhead = time.perf_counter() - t0
    owned = connect(address, workers) if todo else False
    bar = tqdm(total=len(jobs), initial=summary.skipped, unit="bag", disable=not progress, dynamic_ncols=True)
    try:
        if todo:
            t1 = time.perf_counter()
            boxes = {"ts": [ray.put(pack_dir(models.ts_model))]}
            if models.seg_model:
                boxes["seg"] = [ray.put(pack_dir(models.seg_model))]
            spec = {"hash": m_hash, "models": {**asdict(models), "ts_model": "", "seg_model": None}}
            task = ray.remote(num_cpus=1, max_retries=1)(_task)
            in_flight_max = 2 * cluster_cpus()
            pending: dict[Any, int] = {}
            queue = list(todo)
            overhead += time.perf_counter() - t1
            while queue or pending:
                t1 = time.perf_counter()
                while queue and len(pending) < in_flight_max:
                    i = queue.pop(0)
                    ref = task.remote(rows[i][0].as_dict(), spec, boxes, options.as_dict())
                    pending[ref] = i
                overhead += time.perf_counter() - t1
                ready, _ = ray.wait(list(pending), num_returns=1)
                t1 = time.perf_counter()
                for ref in ready:
                    i = pending.pop(ref)
                    job, b_hash, _ = rows[i]
                    try:
                        res = ray.get(ref)
                    except Exception as exc:  # the worker died (OOM, crash) twice: an error row, the run goes on
                        res = error_result(job, f"worker failed: {type(exc).__name__}: {exc}")
                    res["bag_hash"], res["models_hash"] = b_hash, m_hash
                    if b_hash is not None:
                        store_result(result_path(out, b_hash, m_hash), res)
                    results[i] = res
                    summary.done += 1
                    summary.failed += res.get("status") != "ok"
                    if on_result is not None:
                        on_result(res)
                    bar.update(1)
                    bar.set_postfix(done=summary.done + summary.skipped, failed=summary.failed)
                overhead += time.perf_counter() - t1
    finally:
        bar.close()
        if owned:
            ray.shutdown()
    summary.results = [r for r in results if r is not None]
    summary.wall_s = time.perf_counter() - t0
    summary.submit_overhead_s = overhead
    return summary
