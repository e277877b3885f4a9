"""Time-series metrics on hand-made sequences whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from flow_anomaly_ros.data.injection import FaultInterval
from flow_anomaly_ros.evaluation.timeseries_metrics import (
    Sequence_,
    evaluate_sequences,
    event_metrics,
    point_metrics,
    vus_pr,
    window_labels,
)

W, S = 2.0, 0.1


def _seq(score, faults, alarm=None, quality=None):
    end = np.round(np.arange(1, len(score) + 1) * S + W, 6)
    start = end - W
    score = np.asarray(score, dtype=float)
    alarm = score > 0.5 if alarm is None else alarm
    quality = np.zeros(len(score), bool) if quality is None else quality
    return Sequence_(start, end, score, alarm | quality, quality, np.ones(len(score), bool), faults)


def test_window_labels_overlap_rule():
    start = np.array([0.0, 1.0, 2.0, 2.9, 5.0])
    end = start + W
    labels, which = window_labels(start, end, [FaultInterval(3.5, 4.0, "spike", "clear", "imu", 1.0)])
    # [2.0,4.0) holds the whole 0.5 s fault; [2.9,4.9) too; [1,3) and [0,2) and [5,7) do not overlap
    assert labels.tolist() == [0, 0, 1, 1, 0] and which.tolist() == [-1, -1, 0, 0, -1]
    labels, _ = window_labels(np.array([0.0]), np.array([2.0]), [FaultInterval(1.9, 5.0, "drift", "clear", "imu", 1)])
    assert labels.tolist() == [-1]  # 0.1 s sliver of a 3 s fault: ignored, neither hit nor miss


def test_point_metrics_known_values():
    labels = np.array([0, 0, 1, 1])
    m = point_metrics(labels, np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, True, False, True]))
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["roc_auc"] == pytest.approx(0.75)


def test_event_metrics_detection_delay_and_precision():
    fault = FaultInterval(3.0, 4.0, "bias_jump", "clear", "imu.accel_x", 5.0)
    score = np.zeros(60)
    end = np.round(np.arange(1, 61) * S + W, 6)
    score[(end > 3.45) & (end < 4.5)] = 1.0  # first alarm at window end 3.5 s
    score[end > 7.95] = 1.0  # a false alarm run at the end
    seq = _seq(score, [fault])
    m = event_metrics([seq], W)
    assert m["event_recall"] == 1.0 and m["event_precision"] == 0.5
    assert m["mean_delay_s"] == pytest.approx(0.5) and m["per_fault_recall"] == {"bias_jump": 1.0}
    assert m["per_target_detected"] == {"bias_jump imu.accel_x": [1, 1]}


def test_vus_pr_perfect_and_random():
    labels = np.zeros(400, int)
    labels[100:140] = 1
    labels[300:330] = 1
    assert vus_pr([labels], [labels.astype(float)], max_buffer=0) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    rand = np.mean([vus_pr([labels], [rng.random(400)], max_buffer=10) for _ in range(20)])
    assert 0.1 < rand < 0.35  # about the (ramp-widened) base rate, far below a perfect score
    assert vus_pr([labels], [labels + 0.01 * rng.random(400)], max_buffer=10) > 0.85


def test_data_quality_windows_rank_first_and_count_as_alarms():
    fault = FaultInterval(3.0, 3.5, "nan", "clear", "imu", 0.5)
    n = 60
    end = np.round(np.arange(1, n + 1) * S + W, 6)
    quality = (end > 3.0) & (end - W < 3.5)
    score = np.where(quality, np.nan, 0.1)
    m = evaluate_sequences([_seq(score, [fault], quality=quality)], W, S)
    assert m["roc_auc"] == 1.0 and m["recall"] == 1.0 and m["event_recall"] == 1.0 and m["precision"] == 1.0
