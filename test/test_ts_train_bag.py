"""``flow-anomaly ts train --bag`` / ``ts score``: training and reviewing on your own rosbag2 recordings.

The bag is written the way the demo writes one (sensor_msgs/Imu + ros2_socketcan's can_msgs/Frame, via BagWriter)
from the first 45 s of the KITTI drive with DBC-generated CAN. Training runs in its own process, like a user would;
the model must load, and ``ts score`` must give exactly the node core's ``score_recording`` on the same bag.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flow_anomaly_ros.cli import main
from flow_anomaly_ros.data.bags import BagWriter, make_qos
from flow_anomaly_ros.timeseries.events import KIND_IMU

REPO = Path(__file__).resolve().parents[1]
IMU, CAN = "/imu/data", "/from_can_bus"
DURATION_S = 45.0


def _write_bag(path: Path, rec, storage: str, can_topic: str | None = CAN, with_can: bool = True) -> Path:
    from flow_anomaly_ros.demo.recording import _Messages

    with BagWriter(path, storage=storage) as w:
        w.add_topic(IMU, "sensor_msgs/msg/Imu", [make_qos(depth=1000)])
        if can_topic:
            w.add_topic(can_topic, "can_msgs/msg/Frame", [make_qos(depth=1000)])
        m = _Messages(w)
        for e in rec.events:
            t = float(e["stamp"])
            if e["kind"] == KIND_IMU:
                w.write_message(IMU, round(t * 1e9), m.imu(t, e["accel"], e["gyro"]))
            elif can_topic and with_can:
                n = int(e["dlc"])
                frame = (t, int(e["can_id"]), e["data"][:n].tobytes(), n, bool(e["is_error"]), bool(e["is_extended"]))
                w.write_message(can_topic, round(t * 1e9), m.can(frame))
    return path


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """(clean recording, its MCAP bag, a config YAML using the whole bag: train 80 %, calibrate 20 %)."""
    from flow_anomaly_ros.data.timeseries_dataset import base_recording
    from flow_anomaly_ros.timeseries.signals import DEFAULT_CONFIG_PATH, default_config

    config, _ = default_config()
    rec, _ = base_recording(config, seed=0, duration_s=DURATION_S)
    tmp = tmp_path_factory.mktemp("ts_bag")
    doc = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    doc["split"] = {"train": [0.0, 0.8], "calibrate": [0.8, 1.0], "train_stride_s": 0.1}
    cfg = tmp / "my_model.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return rec, _write_bag(tmp / "drive_mcap", rec, "mcap"), cfg


def _cli(*args: str) -> int:
    return main(["ts", *args])


def test_train_on_bag_then_score_matches_core(drive, tmp_path):
    from flow_anomaly_ros.data.bag_recording import recording_from_bag
    from flow_anomaly_ros.model_store import read_manifest
    from flow_anomaly_ros.timeseries.bag_training import split_recording
    from flow_anomaly_ros.timeseries.normalise import RobustNormaliser
    from flow_anomaly_ros.timeseries.pipeline import (
        STATUS_NAMES,
        StreamingScorer,
        featurize_recording,
        load_timeseries_model,
        score_recording,
        stack_features,
    )

    rec, bag, cfg = drive
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "flow_anomaly_ros.cli", "ts", "train", "--bag", str(bag), "--config", str(cfg)]
    cmd += ["--quick", "--epochs", "3", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "signals missing: none" in proc.stdout and "threshold" in proc.stdout

    model = load_timeseries_model(out)
    training = read_manifest(out)["training"]
    assert training["data"]["bags"] == [str(bag.resolve())]
    assert set(training["signals"]) == set(model.config.signal_names)
    assert training["n_train"] > 100 and training["n_calibrate"] > 30

    # the bag gives the same training features as the recording it was written from (stamps via nanoseconds)
    train_part = split_recording(rec, {"train": (0.0, 0.8)})["train"]
    x_direct, _ = stack_features(featurize_recording(model.config, train_part, stride_s=0.1))
    direct = RobustNormaliser.fit(x_direct)
    assert abs(len(x_direct) - training["n_train"]) <= 1
    np.testing.assert_allclose(model.normaliser.center, direct.center, rtol=1e-6, atol=1e-9)

    # ts score == the node core's score_recording on the recording read from the bag
    csv_path = tmp_path / "scores.csv"
    assert _cli("score", "--bag", str(bag), "--model", str(out), "--out", str(csv_path), "--top", "2") == 0
    rows = list(csv.DictReader(csv_path.open()))
    scorer = StreamingScorer.from_model_dir(out, contributions="none")  # same scores, faster
    expected = score_recording(scorer, recording_from_bag(bag, IMU, CAN))
    assert len(rows) == len(expected) > 300
    for row, r in zip(rows, expected):
        assert float(row["start_s"]) == r.start_s and row["status"] == STATUS_NAMES[r.status]
        assert (math.isnan(r.score) and row["score"] == "nan") or float(row["score"]) == r.score
        assert int(row["is_anomaly"]) == r.is_anomaly
    ok = [row for row in rows if row["status"] == "OK"]
    assert ok and all(len(row["top_features"].split(";")) == 2 for row in ok)
    # a clean drive against its own training: few alarms
    assert sum(int(row["is_anomaly"]) for row in ok) / len(ok) < 0.2


def test_sqlite3_bag_reads_like_mcap(drive, tmp_path):
    from flow_anomaly_ros.data.bag_recording import recording_from_bag

    rec, bag, _ = drive
    head = rec.slice_time(-np.inf, float(rec.events["stamp"][0]) + 3.0)
    db3 = _write_bag(tmp_path / "drive_db3", head, "sqlite3")
    a = recording_from_bag(db3, IMU, CAN).events
    b = recording_from_bag(bag, IMU, CAN).events[: len(a)]
    assert len(a) == len(head.events)
    np.testing.assert_array_equal(a, b)


def test_missing_topic_is_a_clear_error(drive, tmp_path, capsys):
    _, bag, cfg = drive
    args = ["train", "--bag", str(bag), "--config", str(cfg), "--out", str(tmp_path / "m")]
    assert _cli(*args, "--imu-topic", "/imu/wrong") == 2
    err = capsys.readouterr().err
    assert "topic /imu/wrong is not in the bag" in err and IMU in err
    assert _cli(*args, "--can-topic", "/can_rx") == 2
    assert "topic /can_rx is not in the bag" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_topic_without_messages_is_a_clear_error(drive, tmp_path, capsys):
    rec, _, cfg = drive
    head = rec.slice_time(-np.inf, float(rec.events["stamp"][0]) + 3.0)
    bag = _write_bag(tmp_path / "imu_only", head, "mcap", with_can=False)
    assert _cli("train", "--bag", str(bag), "--config", str(cfg), "--out", str(tmp_path / "m")) == 2
    assert f"no messages on {CAN}" in capsys.readouterr().err


def test_signal_never_seen_is_named(drive, tmp_path, capsys):
    _, bag, cfg = drive
    doc = yaml.safe_load(cfg.read_text())
    doc["features"]["signals"].append({"name": "can.gear", "can": "GEAR_PACKET.GEAR", "staleness_s": 0.5})
    doc["features"]["can_periods_s"]["GEAR_PACKET"] = 0.1
    bad = tmp_path / "gear.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert _cli("train", "--bag", str(bag), "--config", str(bad), "--out", str(tmp_path / "m")) == 2
    err = capsys.readouterr().err
    assert "signal(s) never seen: can.gear" in err and "CAN ids on /from_can_bus: 0x" in err


def test_bad_dbc_path_and_unknown_signal(drive, tmp_path, capsys):
    _, bag, cfg = drive
    doc = yaml.safe_load(cfg.read_text())
    doc["features"]["dbc"] = "does_not_exist/my_car.dbc"
    bad = tmp_path / "bad_dbc.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert _cli("train", "--bag", str(bag), "--config", str(bad), "--out", str(tmp_path / "m")) == 2
    assert "features.dbc: DBC 'does_not_exist/my_car.dbc'" in capsys.readouterr().err

    doc = yaml.safe_load(cfg.read_text())
    doc["features"]["signals"][6]["can"] = "WHEEL_SPEEDS.NO_SUCH_SIGNAL"
    bad.write_text(yaml.safe_dump(doc))
    assert _cli("train", "--bag", str(bag), "--config", str(bad), "--out", str(tmp_path / "m")) == 2
    assert "signal 'NO_SUCH_SIGNAL' not in message WHEEL_SPEEDS" in capsys.readouterr().err


def test_dbc_path_relative_to_the_config(drive, tmp_path):
    from flow_anomaly_ros.timeseries.bag_training import resolve_config_dbc
    from flow_anomaly_ros.timeseries.signals import load_pipeline_config, resolve_dbc_path

    _, _, cfg = drive
    (tmp_path / "vehicle").mkdir()
    (tmp_path / "vehicle" / "my_car.dbc").write_bytes(resolve_dbc_path("toyota_prius_2010_pt").read_bytes())
    doc = yaml.safe_load(cfg.read_text())
    doc["features"]["dbc"] = "my_car.dbc"
    path = tmp_path / "vehicle" / "model.yaml"
    path.write_text(yaml.safe_dump(doc))
    config, _ = load_pipeline_config(path)
    assert resolve_config_dbc(config, path).dbc == str((tmp_path / "vehicle" / "my_car.dbc").resolve())


def test_overlapping_split_is_an_error(drive, tmp_path, capsys):
    _, bag, cfg = drive
    doc = yaml.safe_load(cfg.read_text())
    doc["split"] = {"train": [0.0, 0.9], "calibrate": [0.5, 1.0]}
    bad = tmp_path / "overlap.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert _cli("train", "--bag", str(bag), "--config", str(bad), "--out", str(tmp_path / "m")) == 2
    assert "overlap" in capsys.readouterr().err
