"""Streaming scorer contract: same scores live and offline, honest status for bad input, safe model files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flow_anomaly_ros.data.timeseries_dataset import base_recording
from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors import make_detector
from flow_anomaly_ros.timeseries.events import KIND_CAN, KIND_IMU
from flow_anomaly_ros.timeseries.normalise import RobustNormaliser
from flow_anomaly_ros.timeseries.pipeline import (
    INVALID_INPUT,
    OK,
    STALE_INPUT,
    WARMING_UP,
    StreamingScorer,
    TimeseriesModel,
    WindowFeaturizer,
    featurize_recording,
    score_recording,
    stack_features,
)
from flow_anomaly_ros.timeseries.signals import default_config

TINY_FLOW = {"epochs": 2, "num_layers": 2, "hidden_features": 16, "num_blocks_per_layer": 1, "batch_size": 128}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 40 s real KITTI + CAN recording and a tiny RealNVP model trained on its first 25 s."""
    import torch

    torch.set_num_threads(1)
    config, _ = default_config()
    rec, _ = base_recording(config, seed=0, duration_s=40.0)
    train = rec.slice_time(0.0, 25.0)
    x, _ = stack_features(featurize_recording(config, train.events, stride_s=0.1))
    norm = RobustNormaliser.fit(x)
    det = make_detector("realnvp", **TINY_FLOW).fit(norm.transform(x))
    det.calibrate(norm.transform(x), quantile=0.95)
    path = tmp_path_factory.mktemp("ts") / "model"
    TimeseriesModel(config, norm, det).save(path)
    return {"config": config, "rec": rec, "test": rec.slice_time(25.0, 40.0), "path": path}


def test_live_polling_at_any_time_gives_the_offline_scores(small):
    offline = score_recording(small["path"], small["test"])
    scorer = StreamingScorer.from_model_dir(small["path"])
    live, next_poll = [], None
    ev = small["test"].events
    for row in ev:  # the node pushes as messages arrive and polls on a timer, here every 0.37 s of stamps
        stamp = float(row["stamp"])
        if next_poll is None:
            next_poll = stamp + 0.37
        if stamp >= next_poll:
            live += scorer.poll(stamp)
            next_poll = stamp + 0.37
        if row["kind"] == KIND_IMU:
            assert scorer.push_imu(stamp, row["accel"], row["gyro"]) is None
        else:
            scorer.push_can(stamp, int(row["can_id"]), row["data"][: row["dlc"]].tobytes(), int(row["dlc"]))
    live += scorer.poll(float(ev["stamp"][-1]))
    assert len(live) == len(offline) > 100
    assert [r.end_s for r in live] == [r.end_s for r in offline]
    np.testing.assert_array_equal([r.score for r in live], [r.score for r in offline])
    assert [r.status for r in live] == [r.status for r in offline]


def test_first_windows_warm_up_then_ok_with_contributions(small):
    res = score_recording(small["path"], small["test"])
    assert res[0].status == WARMING_UP and not res[0].is_anomaly and np.isnan(res[0].score)
    ok = [r for r in res if r.status == OK]
    assert len(ok) > 0.8 * len(res)
    r = ok[0]
    assert (len(r.contributions) == len(r.feature_names) and abs(sum(r.contributions) - 1.0) < 1e-6) or sum(
        r.contributions
    ) == 0.0
    assert all(np.isfinite(x.score) for x in ok)
    assert np.isclose(np.diff([x.end_s for x in res]), 0.1).all()


def test_contributions_anomalous_explains_exactly_the_flagged_windows_with_the_same_numbers(small):
    """contributions="anomalous" (the node's default) gives the flagged windows what "all" gives them, and the
    others none; the scores do not depend on the mode; an unknown mode is refused."""
    runs = {
        mode: score_recording(StreamingScorer.from_model_dir(small["path"], contributions=mode), small["test"])
        for mode in ("all", "anomalous", "none")
    }
    flagged = [i for i, r in enumerate(runs["all"]) if r.is_anomaly]
    assert flagged, "the 0.95-quantile threshold flags some test windows"
    for res in runs.values():
        np.testing.assert_array_equal([r.score for r in res], [r.score for r in runs["all"]])
    for i, (a, e, n) in enumerate(zip(runs["all"], runs["anomalous"], runs["none"])):
        assert n.contributions == []
        assert e.contributions == (a.contributions if i in flagged else [])
        if a.status == OK:
            assert len(a.contributions) == len(a.feature_names)
    with pytest.raises(ValueError, match="contributions='some'"):
        StreamingScorer.from_model_dir(small["path"], contributions="some")


def _with(rec, mask_keep=None, edit=None):
    ev = rec.events.copy()
    if edit is not None:
        edit(ev)
    if mask_keep is not None:
        ev = ev[mask_keep(ev)]
    return ev


def test_nan_imu_burst_is_invalid_input_and_a_data_quality_fault(small):
    def edit(ev):
        rows = (ev["kind"] == KIND_IMU) & (ev["stamp"] >= 33.0) & (ev["stamp"] < 33.05)
        ev["gyro"][rows] = np.nan

    res = score_recording(small["path"], _with(small["test"], edit=edit))
    hit = [r for r in res if r.start_s <= 33.0 < r.end_s]
    assert hit and all(r.status == INVALID_INPUT and not r.is_anomaly and r.data_quality_fault for r in hit)
    assert "nan" in hit[0].status_message
    clean = [r for r in res if r.end_s <= 32.9 and r.status != WARMING_UP]
    assert all(r.status == OK for r in clean)


def test_imu_dropout_is_stale_input(small):
    keep = lambda ev: ~((ev["kind"] == KIND_IMU) & (ev["stamp"] >= 33.0) & (ev["stamp"] < 33.5))  # noqa: E731
    res = score_recording(small["path"], _with(small["test"], mask_keep=keep))
    hit = [r for r in res if r.start_s < 33.4 and r.end_s > 33.2]
    assert hit and all(r.status == STALE_INPUT and r.data_quality_fault and not r.is_anomaly for r in hit)
    assert "imu.accel_x silent" in hit[0].status_message


def test_bad_samples_are_rejected_with_a_reason_and_counted(small):
    scorer = StreamingScorer.from_model_dir(small["path"])
    assert scorer.push_imu(1.0, [0, 0, 9.8], [0, 0, 0]) is None
    assert "duplicate" in scorer.push_imu(1.0, [0, 0, 9.8], [0, 0, 0])
    assert "out-of-order" in scorer.push_imu(0.5, [0, 0, 9.8], [0, 0, 0])
    assert "NaN" in scorer.push_imu(1.01, [np.nan, 0, 9.8], [0, 0, 0])
    assert "NaN" in scorer.push_imu(1.02, [0, 0, 9.8], [np.inf, 0, 0])
    assert "3 numbers" in scorer.push_imu(1.03, [0, 0], [0, 0, 0])
    assert "DLC" in scorer.push_can(1.0, 0xAA, b"\x00" * 4)  # WHEEL_SPEEDS has 8 bytes
    assert scorer.push_can(1.0, 0x7FF, b"\x01") is None  # unknown id: accepted, counted
    assert scorer.push_can(1.0, 0x7FF, b"", is_error=True) is None
    c = scorer.counters
    assert c["imu[imu]_duplicate"] == 1 and c["imu[imu]_out_of_order"] == 1 and c["imu[imu]_invalid"] == 3
    assert c["can_dlc_mismatch"] == 1 and c["can_unknown_id"] == 1 and c["can_error_frames"] == 1
    assert "source not used" in scorer.push_imu(1.1, [0, 0, 9.8], [0, 0, 0], source="imu2")


def test_late_sample_rejected_and_reset_recovers(small):
    scorer = StreamingScorer.from_model_dir(small["path"])
    ev = small["test"].events
    first = ev[ev["stamp"] < 30.0]
    score_recording(scorer, first)
    reason = scorer.push_imu(20.0, [0, 0, 9.8], [0, 0, 0])  # a looping bag jumped back 10 s
    assert reason is not None and "reset" in reason
    scorer.reset("clock jumped back")
    assert scorer.push_imu(20.0, [0, 0, 9.8], [0, 0, 0]) is None
    res = scorer.poll(25.0)
    assert res and res[0].status == WARMING_UP
    assert scorer.counters["resets"] == 1


def test_windows_that_missed_a_late_sample_are_invalid_not_scored_without_it(small):
    """Live backlog: a sample older than the last scored window is rejected, and the windows still to come that
    should have held it are INVALID_INPUT ("late"), never a finite score computed without it."""
    ev = small["test"].events
    scorer = StreamingScorer.from_model_dir(small["path"])
    score_recording(scorer, ev[ev["stamp"] < 32.0])
    late_stamp = scorer.featurizer._finalised_end - 0.05
    reason = scorer.push_imu(late_stamp, [0, 0, 9.8], [0, 0, 0])
    assert reason is not None and "before the last scored window" in reason
    after = score_recording(scorer, ev[(ev["stamp"] >= 32.0) & (ev["stamp"] < 34.0)])
    assert after and after[0].status == INVALID_INPUT and "late" in after[0].status_message
    assert all(np.isnan(r.score) for r in after if r.status != OK)


def test_huge_time_jump_emits_a_bounded_number_of_windows(small):
    scorer = StreamingScorer.from_model_dir(small["path"])
    scorer.push_imu(1.0, [0, 0, 9.8], [0, 0, 0])
    res = scorer.poll(1e6)
    assert len(res) <= 600 and scorer.counters["skipped_windows"] > 0
    assert all(r.status != OK for r in res)


def test_saved_model_gives_identical_scores_in_a_new_process(small, tmp_path):
    ev_path = tmp_path / "test.npz"
    small["test"].save(ev_path)
    here = [r.score for r in score_recording(small["path"], small["test"])]
    code = (
        "import json,sys; from flow_anomaly_ros.timeseries.pipeline import score_recording;"
        "from flow_anomaly_ros.timeseries.events import Recording;"
        f"r=score_recording({str(small['path'])!r}, Recording.load({str(ev_path)!r}));"
        "print(json.dumps([x.score for x in r]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    there = json.loads(out.stdout.strip().splitlines()[-1].replace("NaN", "null"))
    assert len(there) == len(here)
    for a, b in zip(here, there):
        assert (b is None and np.isnan(a)) or a == b


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_fail_with_a_clear_message(small, tmp_path):
    p = _copy_model(small["path"], tmp_path / "m")
    w = p / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="checksum"):
        StreamingScorer.from_model_dir(p)


def test_corrupt_manifest_fails_with_a_clear_message(small, tmp_path):
    p = _copy_model(small["path"], tmp_path / "m")
    (p / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        StreamingScorer.from_model_dir(p)


def test_tampered_onnx_file_fails(small, tmp_path):
    p = _copy_model(small["path"], tmp_path / "m")
    (p / "realnvp.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match=r"realnvp\.onnx"):
        StreamingScorer.from_model_dir(p)


def test_mismatched_pipeline_fails_naming_the_problem(small, tmp_path):
    p = _copy_model(small["path"], tmp_path / "m")
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["pipeline"]["signals"] = manifest["pipeline"]["signals"][:-1]  # one signal fewer than trained
    (p / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="feature names"):
        StreamingScorer.from_model_dir(p)
    with pytest.raises(ModelFileError, match="not found"):
        StreamingScorer.from_model_dir(tmp_path / "missing")


def test_model_carries_its_dbc_and_loads_where_the_training_dbc_is_gone(small, tmp_path):
    """A model trained with a DBC file at some path loads on a machine without that path (the vehicle)."""
    import dataclasses
    import shutil

    from flow_anomaly_ros.timeseries.pipeline import load_timeseries_model
    from flow_anomaly_ros.timeseries.signals import resolve_dbc_path

    own_dbc = tmp_path / "my_car.dbc"
    shutil.copy(resolve_dbc_path(small["config"].dbc), own_dbc)
    trained = load_timeseries_model(small["path"])
    trained.config = dataclasses.replace(trained.config, dbc=str(own_dbc))
    out = trained.save(tmp_path / "model")
    assert (out / "my_car.dbc").read_bytes() == own_dbc.read_bytes()
    own_dbc.unlink()  # the vehicle has no /home/me/my_car.dbc
    moved = _copy_model(out, tmp_path / "deployed")
    assert load_timeseries_model(moved).config.dbc == str(moved / "my_car.dbc")
    a = [r.score for r in score_recording(small["path"], small["test"])]
    b = [r.score for r in score_recording(moved, small["test"])]
    np.testing.assert_array_equal(a, b)
    (moved / "my_car.dbc").write_text('VERSION "tampered"\n')
    with pytest.raises(ModelFileError, match=r"my_car\.dbc"):
        load_timeseries_model(moved)


def test_check_compatible_names_missing_inputs(small):
    from flow_anomaly_ros.timeseries.signals import ConfigError, check_compatible

    with pytest.raises(ConfigError, match="missing"):
        check_compatible(small["config"], {"imu_sources": ["front_imu"]})
    with pytest.raises(ConfigError, match="DBC"):
        check_compatible(small["config"], {"dbc": "vw_mqb"})
    check_compatible(small["config"], {"imu_sources": ["imu"], "dbc": "toyota_prius_2010_pt.dbc"})


def test_can_only_rows_count_kinds(small):
    ev = small["test"].events
    assert (ev["kind"] == KIND_CAN).sum() > 5 * (ev["kind"] == KIND_IMU).sum() / 2


def test_windows_prepared_ahead_equal_windows_computed_at_their_end(small):
    """``prepare`` (the node computes a window's signal part as soon as its inputs are final) changes no feature,
    status or message, also when it was called too early: here the IMU stalls for 0.3 s and ``prepare`` is called on
    the CAN stamps alone for a while (as when the node stops waiting for a silent input), so IMU samples then arrive
    at or before prepared ticks and must discard the prepared part. Windows are finalised on the node's watermark."""

    def edit(ev):
        ev["gyro"][(ev["kind"] == KIND_IMU) & (ev["stamp"] >= 30.0) & (ev["stamp"] < 30.05)] = np.nan
        ev["dlc"][np.flatnonzero((ev["kind"] == KIND_CAN) & (ev["stamp"] >= 36.0))[0]] = 1

    drop = lambda ev: ~((ev["kind"] == KIND_CAN) & (ev["stamp"] >= 32.0) & (ev["stamp"] < 32.6))  # noqa: E731
    events = _with(small["test"], mask_keep=drop, edit=edit)
    config = small["config"]
    reference = featurize_recording(config, events)

    stalled = (events["kind"] == KIND_IMU) & (events["stamp"] >= 34.0)  # from 34 s the IMU arrives 0.3 s late
    order = np.argsort(events["stamp"] + np.where(stalled, 0.3, 0.0), kind="stable")
    featurizer = WindowFeaturizer(config)
    newest = {"imu": -np.inf, "can": -np.inf}
    live, discarded = [], 0
    for row in events[order]:
        stamp, kind = float(row["stamp"]), "imu" if row["kind"] == KIND_IMU else "can"
        if kind == "imu":
            featurizer.push_imu(stamp, row["accel"], row["gyro"])
        else:
            featurizer.push_can(stamp, int(row["can_id"]), row["data"][: row["dlc"]].tobytes(), int(row["dlc"]))
        discarded += featurizer._prepared_k is None and featurizer._prepared_tick > -np.inf
        newest[kind] = max(newest[kind], stamp)
        horizon = min(newest.values())
        nxt = featurizer.next_window_end
        if nxt is not None and horizon >= nxt:
            live += featurizer.poll(horizon)
        else:  # during the stall, on the CAN stamps alone: too early for the stalled IMU samples
            featurizer.prepare(newest["can"] if 34.0 <= stamp < 35.4 else horizon)
    live += featurizer.poll(float(events["stamp"].max()))

    assert featurizer.prepared_windows > 0.8 * len(reference) and discarded > 0
    assert [w.end_s for w in live] == [w.end_s for w in reference]
    assert [(w.status, w.status_message) for w in live] == [(w.status, w.status_message) for w in reference]
    assert {w.status for w in reference} >= {OK, INVALID_INPUT, STALE_INPUT}
    for a, b in zip(live, reference):
        assert (a.features is None and b.features is None) or a.features.tobytes() == b.features.tobytes()


def test_explain_after_poll_gives_the_same_contributions_and_a_failure_keeps_the_scores(small):
    """The node publishes a score first and explains it after (poll(explain=False), then explain): same numbers
    as poll() explaining at once. An attribution that fails leaves valid scores without contributions, counted."""
    events = small["test"].events
    at_once = score_recording(StreamingScorer.from_model_dir(small["path"], contributions="anomalous"), events)
    scorer = StreamingScorer.from_model_dir(small["path"], contributions="anomalous")
    explained = []
    poll = scorer.poll

    def poll_then_explain(now_s, explain=True):  # what the node does: score, publish, then explain
        results = poll(now_s, explain=False)
        assert all(r.contributions == [] for r in results)
        explained.extend(scorer.explain(results))
        return results

    scorer.poll = poll_then_explain
    later = score_recording(scorer, events)
    assert [r.end_s for r in later] == [r.end_s for r in at_once]
    assert [r.score for r in later] == [r.score for r in at_once]
    assert [r.contributions for r in later] == [r.contributions for r in at_once]
    assert explained == [r for r in later if r.is_anomaly] and explained

    broken = StreamingScorer.from_model_dir(small["path"], contributions="all")

    def fail(z):
        raise RuntimeError("attribution broke")

    broken.model.detector.contributions = fail
    results = score_recording(broken, events)
    ok = [r for r in results if r.status == OK]
    assert ok and all(np.isfinite(r.score) and r.contributions == [] for r in ok)
    assert broken.counters["explain_errors"] == len(ok)
