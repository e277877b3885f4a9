"""Fleet evaluation throughput: bags per minute serially, on Ray with 1 worker and with 2, on the same bags.

The bags are demo recordings (``make_demo_bag``: KITTI IMU/GPS, DBC-generated CAN, no camera frames to keep the
bench about the time-series path) and the model is a quick RealNVP trained on one of them with ``train_from_bags``.
Each run starts from an empty result store (nothing skipped). Measured in one process, one after the other:

- worker start-up: a fresh worker's imports (torch, the cores), run once per worker before the timed run;
- serial: ``fleet.engine.serial_result`` (the per-bag function) over every bag in this process: the baseline;
- Ray with 1 and 2 worker CPUs (a fresh local ``ray.init`` each; its start-up is reported, not counted in
  bags/min): ``run_fleet``; the ratio 2 workers / 1 worker is the parallel speed-up on this machine;
- peak RSS per worker process (``ru_maxrss`` the task reports) and the driver's own time per bag (hashing,
  packing the models, submitting, storing results: everything but waiting).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line, markdown_table, parser


def make_bags(root: Path, n: int, duration_s: float) -> list[Path]:
    from flow_anomaly_ros.demo.config import DemoConfig
    from flow_anomaly_ros.demo.recording import make_demo_bag

    bags = []
    for i in range(n):
        cfg = DemoConfig.quick().with_overrides(
            seed=100 + i, bag_duration_s=duration_s, camera_hz=0.05, camera_height=32, camera_width=64
        )
        bag = root / f"car_{i % 2}" / f"drive_{i}"
        bag.parent.mkdir(parents=True, exist_ok=True)
        make_demo_bag(bag, cfg)
        (bag / "ground_truth.json").unlink()  # unlabelled: the alarm review a fleet night runs
        (bag / "camera_labels.npz").unlink()
        bags.append(bag)
    return bags


def train(bag: Path, out: Path) -> Path:
    from flow_anomaly_ros.timeseries.bag_training import train_from_bags
    from flow_anomaly_ros.timeseries.experiment import QUICK_OVERRIDES
    from flow_anomaly_ros.timeseries.signals import default_config

    config, doc = default_config()
    model, summary = train_from_bags(config, doc, [bag], "realnvp", params={**QUICK_OVERRIDES["realnvp"], "epochs": 2})
    model.save(out, training=summary)
    return out


def _warm() -> int:
    """A worker's one-time start-up: the imports a bag task needs (torch, the cores); returns its pid."""
    import os

    import torch  # noqa: F401

    import flow_anomaly_ros.fleet.bag_eval
    import flow_anomaly_ros.timeseries.pipeline  # noqa: F401

    time.sleep(0.5)  # keep this worker busy so that the next warm-up task starts another one
    return os.getpid()


def main() -> int:
    args = parser(__doc__).parse_args()
    import ray

    from flow_anomaly_ros.fleet.bag_eval import EvalOptions, FleetModels
    from flow_anomaly_ros.fleet.engine import run_fleet, serial_result
    from flow_anomaly_ros.fleet.inputs import jobs_from_paths

    n, duration = (4, 30.0) if args.quick else (8, 60.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_fleet_"))
    try:
        t0 = time.perf_counter()
        bags = make_bags(tmp / "drives", n, duration)
        models = FleetModels(str(train(bags[0], tmp / "ts_model")))
        print(f"{n} bags of {duration:.0f} s and the model ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        jobs = jobs_from_paths([tmp / "drives"])
        rows = []

        t0 = time.perf_counter()
        serial = [serial_result(j, models, EvalOptions()) for j in jobs]
        serial_s = time.perf_counter() - t0
        assert all(r["status"] == "ok" for r in serial), [r.get("error") for r in serial]
        rows.append(["serial (no Ray, this process)", n, "-", "-", serial_s, 60 * n / serial_s, 1.0, "-", "-"])
        per_worker = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            init_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pids = ray.get([ray.remote(num_cpus=1)(_warm).remote() for _ in range(workers)])
            warm_s = time.perf_counter() - t0
            assert len(set(pids)) == workers, pids
            try:
                run = run_fleet(jobs, models, tmp / f"out_{workers}", progress=False)
            finally:
                ray.shutdown()
            assert run.failed == 0 and run.done == n
            rss: dict[int, float] = {}
            for r in run.results:
                rss[r["run"]["pid"]] = max(rss.get(r["run"]["pid"], 0.0), r["run"]["peak_rss_mb"])
            per_worker[workers] = 60 * n / run.wall_s
            rows.append(
                [
                    f"Ray, {workers} worker{'s' if workers > 1 else ''}",
                    n,
                    init_s,
                    warm_s,
                    run.wall_s,
                    per_worker[workers],
                    per_worker[workers] / (60 * n / serial_s),
                    max(rss.values()),
                    1e3 * run.submit_overhead_s / n,
                ]
            )
        headers = [
            "run",
            "bags",
            "ray.init s",
            "worker start s",
            "wall s",
            "bags/min",
            "x serial",
            "peak RSS/worker MB",
            "driver ms/bag",
        ]
        ratio = per_worker[2] / per_worker[1]
        text = (
            "# Fleet evaluation throughput (bench/bench_fleet.py)\n\n"
            f"{machine_line()}. {n} unlabelled demo bags of {duration:.0f} s (IMU 100 Hz, CAN, GPS; no camera), "
            "time-series model only (quick RealNVP). Wall time excludes ray.init and the workers' one-time start-up "
            "(process + imports: paid once per worker per night, measured separately).\n\n"
            + markdown_table(headers, rows)
            + f"\n\n2 workers / 1 worker: **{ratio:.2f}x** bags per minute.\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
