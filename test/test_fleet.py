"""``flow-anomaly fleet evaluate`` on a real local Ray (2 CPUs) over real demo bags.

The bags are written by the demo's own recording code (KITTI IMU/GPS, DBC-generated CAN, generated camera frames)
at 18 s and 0.5 Hz of small frames: two labelled and two unlabelled drives of two vehicles, plus one truncated bag.
The time-series model is trained on one of them with ``train_from_bags`` (``ts train --bag``); the camera model is
the camera tests' small real network. One Ray session serves the whole module (started once, shut down at the end);
the killed-driver test runs the CLI as a second driver process attached to it with ``--address``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # a dependency of the evaluation extra: missing = a failure, not a skip

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

BAGS = (("car_a", "d1", 1, True), ("car_a", "d2", 2, False), ("car_b", "d3", 3, True), ("car_b", "d4", 4, False))


def _strip(result: dict) -> dict:
    """A result without what depends on the run (wall time, process, memory) or the store (hashes)."""
    return {k: v for k, v in result.items() if k not in ("run", "bag_hash", "models_hash")}


@pytest.fixture(scope="module")
def ray_session():
    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024**2, log_to_driver=False)
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(root directory of bags, [BagJob] incl. the corrupt one, FleetModels)."""
    from camera_testutil import SCENE_SIZE, camera_model_dir

    from flow_anomaly_ros.demo.config import DemoConfig
    from flow_anomaly_ros.demo.recording import CAMERA_LABELS_FILE, GROUND_TRUTH_FILE, make_demo_bag
    from flow_anomaly_ros.fleet.bag_eval import FleetModels
    from flow_anomaly_ros.fleet.inputs import jobs_from_paths
    from flow_anomaly_ros.timeseries.bag_training import train_from_bags
    from flow_anomaly_ros.timeseries.experiment import QUICK_OVERRIDES
    from flow_anomaly_ros.timeseries.signals import default_config

    root = tmp_path_factory.mktemp("fleet") / "drives"
    for vehicle, drive, seed, labelled in BAGS:
        bag = root / vehicle / drive
        bag.parent.mkdir(parents=True, exist_ok=True)
        cfg = DemoConfig.quick().with_overrides(
            seed=seed, bag_duration_s=18.0, camera_hz=0.5, camera_height=SCENE_SIZE[0], camera_width=SCENE_SIZE[1]
        )
        make_demo_bag(bag, cfg)
        if not labelled:
            (bag / GROUND_TRUTH_FILE).unlink()
            (bag / CAMERA_LABELS_FILE).unlink()
    bad = root / "car_b" / "truncated"
    bad.mkdir()
    shutil.copy(root / "car_b" / "d4" / "metadata.yaml", bad / "metadata.yaml")
    data = (root / "car_b" / "d4" / "d4.mcap").read_bytes()
    (bad / "d4.mcap").write_bytes(data[: len(data) // 3])

    config, doc = default_config()
    params = {**QUICK_OVERRIDES["realnvp"], "epochs": 2}
    model, summary = train_from_bags(config, doc, [root / "car_a" / "d2"], "realnvp", params=params, threads=1)
    ts_model = root.parent / "ts_model"
    model.save(ts_model, training=summary)
    jobs = jobs_from_paths([root])
    assert [(j.vehicle, j.drive) for j in jobs] == [
        ("car_a", "d1"),
        ("car_a", "d2"),
        ("car_b", "d3"),
        ("car_b", "d4"),
        ("car_b", "truncated"),
    ]
    return root, jobs, FleetModels(str(ts_model), str(camera_model_dir()))


@pytest.fixture(scope="module")
def first_run(ray_session, fleet, tmp_path_factory):
    from flow_anomaly_ros.fleet.engine import run_fleet

    _, jobs, models = fleet
    out = tmp_path_factory.mktemp("fleet_out")
    return out, run_fleet(jobs, models, out, progress=False)


def test_fleet_equals_serial_per_bag_and_corrupt_bag_is_one_error_row(fleet, first_run):
    from flow_anomaly_ros.demo.evaluate import evaluate_offline
    from flow_anomaly_ros.fleet.bag_eval import EvalOptions, clean_json, demo_models
    from flow_anomaly_ros.fleet.engine import serial_result
    from flow_anomaly_ros.timeseries.bag_training import score_bag

    _, jobs, models = fleet
    _, run = first_run
    assert (run.done, run.skipped, run.failed) == (5, 0, 1)
    by_path = {r["path"]: r for r in run.results}
    errors = [r for r in run.results if r["status"] != "ok"]
    assert len(errors) == 1 and errors[0]["drive"] == "truncated"
    assert "truncated or corrupt" in errors[0]["error"] and "truncated" in errors[0]["path"]
    for job in jobs[:4]:
        fleet_result = by_path[job.path]
        # the same per-bag function run serially, in this process, on the original model directories
        assert _strip(fleet_result) == _strip(serial_result(job, models, EvalOptions()))
        # ... which is `ts score`'s summary and (labelled bags) `flow-anomaly evaluate`'s metric tables
        _, ts_summary = score_bag(models.ts_model, job.path)
        assert {k: fleet_result["timeseries"][k] for k in ts_summary} == clean_json(ts_summary)
        if job.drive in ("d1", "d3"):
            assert fleet_result["labelled"]
            expected = evaluate_offline(job.path, demo_models(models, "realnvp")).metrics
            assert fleet_result["metrics"] == clean_json(expected)
            assert fleet_result["metrics"]["camera"]["frames"] > 0
        else:
            assert not fleet_result["labelled"] and "metrics" not in fleet_result
        alarms = [e for e in fleet_result["events"] if e["source"] == "timeseries" and e["kind"] == "alarm"]
        assert len(alarms) == ts_summary["alarm_events"]
        for e in alarms:
            assert e["start_s"] <= e["peak_s"] <= e["end_s"] and e["peak_score"] >= e["threshold"]
            assert len(e["top_signals"]) == 3 and e["play"].startswith(f"flow-anomaly bag play {job.path} --start ")
        assert fleet_result["camera"]["frames"] > 0 and fleet_result["distance_km"] > 0
        status_s = sum(fleet_result["timeseries"]["status_time_s"].values())
        assert abs(status_s - fleet_result["duration_s"]) < 0.2


def test_report_totals_and_files(first_run, tmp_path):
    import csv

    from flow_anomaly_ros.fleet.report import write_report

    _, run = first_run
    page = write_report(run.results, tmp_path)
    assert page.is_file() and (tmp_path / "alarms_per_hour.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["bags"][0]["drive"] == "truncated"  # worst first: the error row
    rates = [b["ts_alarms_per_hour"] + b["cam_alarms_per_hour"] for b in summary["bags"][1:]]
    assert rates == sorted(rates, reverse=True)
    ok = [r for r in run.results if r["status"] == "ok"]
    n_events = sum(len(r["events"]) for r in ok)
    events = list(csv.DictReader((tmp_path / "events.csv").open()))
    assert len(events) == len(json.loads((tmp_path / "events.json").read_text())) == n_events > 0
    fleet, vehicles = summary["fleet"], summary["vehicles"]
    assert (fleet["bags"], fleet["failed"], fleet["labelled"]) == (5, 1, 2)
    assert vehicles["car_b"]["failed"] == 1 and vehicles["car_a"]["bags"] == 2
    for key in ("ts_alarm_events", "data_quality_events", "cam_alarm_events"):
        assert fleet[key] == vehicles["car_a"][key] + vehicles["car_b"][key]
    hours = sum(r["duration_s"] for r in ok) / 3600
    assert fleet["ts_alarms_per_hour"] == pytest.approx(fleet["ts_alarm_events"] / hours)


def test_second_run_skips_every_finished_bag(fleet, first_run):
    from flow_anomaly_ros.fleet.engine import run_fleet

    _, jobs, models = fleet
    out, run = first_run
    again = run_fleet(jobs, models, out, progress=False)
    assert (again.skipped, again.done, again.failed) == (4, 1, 1)  # only the corrupt bag is retried
    assert [_strip(r) for r in again.results] == [_strip(r) for r in run.results]


def test_killed_driver_resumes(ray_session, fleet, tmp_path):
    _, jobs, models = fleet
    out = tmp_path / "out"
    manifest = tmp_path / "drives.txt"
    manifest.write_text("# path, vehicle, drive\n" + "".join(f"{j.path}, {j.vehicle}, {j.drive}\n" for j in jobs))
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "flow_anomaly_ros.cli", "fleet", "evaluate", "--manifest", str(manifest)]
    cmd += ["--ts-model", models.ts_model, "--seg-model", models.seg_model, "--address", address, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def finished() -> list[dict]:
        files = sorted((out / "results").glob("*.json")) if (out / "results").is_dir() else []
        return [r for r in (json.loads(f.read_text()) for f in files) if r["status"] == "ok"]

    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not finished() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = finished()
    assert 1 <= len(before) < 4, "the driver must be killed mid-run"

    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]  # the corrupt bag fails the run, after all the others
    assert f"{len(before)} already done" in done.stdout
    assert "FAILED" in done.stderr and "truncated" in done.stderr
    after = finished()
    assert len(after) == 4
    assert {r["path"]: _strip(r) for r in before}.items() <= {r["path"]: _strip(r) for r in after}.items()
    assert (out / "report.html").is_file()


def test_inputs_manifest_and_directory(tmp_path):
    from flow_anomaly_ros.fleet.inputs import FleetInputError, collect_jobs, jobs_from_manifest

    (tmp_path / "a" / "bag1").mkdir(parents=True)
    (tmp_path / "a" / "bag1" / "metadata.yaml").write_text("x")
    m = tmp_path / "m.txt"
    m.write_text("a/bag1 truck7 monday  # comment\n\n/abs/bag2,truck8\n")
    jobs = jobs_from_manifest(m)
    assert [(j.path, j.vehicle, j.drive) for j in jobs] == [
        (str(tmp_path / "a" / "bag1"), "truck7", "monday"),
        ("/abs/bag2", "truck8", "bag2"),
    ]
    assert len(collect_jobs([tmp_path / "a" / "bag1"], m)) == 2  # the same bag twice is one job
    (tmp_path / "empty").mkdir()
    with pytest.raises(FleetInputError, match="no rosbag2 bag"):
        collect_jobs([tmp_path / "empty"], None)


def test_node_modules_do_not_import_ray():
    code = (
        "import sys, flow_anomaly_ros.ros.timeseries_node, flow_anomaly_ros.ros.camera_node; "
        "import flow_anomaly_ros.cli as c; c.build_parser(); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_fleet_train_features_equal_serial(ray_session, fleet, tmp_path):
    import numpy as np

    from flow_anomaly_ros.cli import main
    from flow_anomaly_ros.fleet.train import fleet_features
    from flow_anomaly_ros.timeseries.bag_training import (
        bag_features,
        imu_topic_map,
        load_bag_recordings,
        split_fractions,
    )
    from flow_anomaly_ros.timeseries.pipeline import load_timeseries_model
    from flow_anomaly_ros.timeseries.signals import default_config

    _, jobs, _ = fleet
    bags = [j.path for j in jobs[:4]]
    config, doc = default_config()
    topics = imu_topic_map(None, config)
    feats, parts = fleet_features(config, doc, bags, topics, "/from_can_bus", progress=False)
    recordings = [rec for rec, _ in load_bag_recordings(config, bags, topics, "/from_can_bus")]
    stride = float(doc["split"].get("train_stride_s", config.stride_s))
    serial, _ = bag_features(config, recordings, split_fractions(doc), stride)
    assert [p["bag"] for p in parts] == bags
    np.testing.assert_array_equal(feats.x_train, serial.x_train)
    np.testing.assert_array_equal(feats.x_calibrate, serial.x_calibrate)
    assert len(feats.x_train) > 100

    out = tmp_path / "model"
    assert main(["fleet", "train", *bags, "--quick", "--epochs", "1", "--out", str(out)]) == 0
    assert load_timeseries_model(out).config.signal_names == config.signal_names
    # a corrupt bag stops the training with a message naming it (never a model fitted on fewer bags silently)
    assert main(["fleet", "train", *bags, jobs[4].path, "--quick", "--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_bag_play_start_is_the_review_commands_option():
    from flow_anomaly_ros.cli import build_parser

    args = build_parser().parse_args(["bag", "play", "some_bag", "--start", "12.5"])
    assert args.start_offset == 12.5
