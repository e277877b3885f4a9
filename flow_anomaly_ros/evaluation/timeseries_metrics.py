"""Metrics for windowed time-series anomaly detection (paper Table 1 plus range/event metrics).

Inputs are per-window arrays of one test sequence: window start/end (s), score (higher = more anomalous), the
detector's decision, a data-quality flag (STALE/INVALID window), and the labelled fault intervals.

- **Window labels** (:func:`window_labels`): 1 if the window overlaps a fault by at least
  ``min(min_overlap_fraction * window, fault length)``, 0 if it does not overlap any fault, -1 (ignored by the
  point metrics) for a sliver overlap, where neither answer is fair.
- **Point metrics** (the paper's Table 1): precision, recall, F1 of the decisions, ROC-AUC and average precision
  (AP) of the scores. A data-quality window counts as an alarm; for ranking it is placed above every scored window
  (score +inf), the same for every detector. No point-adjusted F1 (it inflates scores; Kim et al., AAAI 2022).
- **Event (range) metrics**: an alarm is raised at a window's end. A fault event is detected if an alarm falls in
  ``[start, end + window)`` (windows containing the fault end up to one window length after it). Event recall =
  detected events / events; event precision = alarm runs (consecutive alarmed windows) that hit an event / alarm
  runs; event F1; per fault type event recall; mean detection delay = first alarm - fault start (detected events);
  ``per_target_detected``: [detected, events] per fault type and target signal (which IMU axis, which message).
- **VUS-PR** (Paparrizos et al., VLDB 2022): the mean, over buffer lengths 0..one window, of the area under the
  precision-recall curve computed against range labels widened by a linear ramp of that buffer length. (The
  original's existence reward is omitted.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sequence_:
    """One scored test sequence."""

    start_s: np.ndarray
    end_s: np.ndarray
    score: np.ndarray  # NaN where the window had no score
    alarm: np.ndarray  # bool: detector decision OR data-quality flag
    quality: np.ndarray  # bool: STALE/INVALID window
    valid: np.ndarray  # bool: window counts (not WARMING_UP / MODEL_ERROR)
    faults: Sequence[object]  # FaultInterval-like: start_s, end_s, fault


def window_labels(
    start_s: np.ndarray, end_s: np.ndarray, faults: Sequence[object], min_overlap_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """(labels in {1, 0, -1}, index of the overlapping fault or -1) per window."""
    labels = np.zeros(len(start_s), dtype=np.int8)
    which = np.full(len(start_s), -1, dtype=np.int64)
    best = np.zeros(len(start_s))
    length = end_s - start_s
    for k, f in enumerate(faults):
        overlap = np.minimum(end_s, f.end_s) - np.maximum(start_s, f.start_s)
        need = np.minimum(min_overlap_fraction * length, max(f.end_s - f.start_s, 1e-9))
        pos = overlap >= need - 1e-9
        sliver = (overlap > 0) & ~pos
        labels[sliver & (labels == 0)] = -1
        take = pos & (overlap > best)
        labels[pos] = 1
        which[take] = k
        best[take] = overlap[take]
    return labels, which


def ranking_scores(scores: Sequence[np.ndarray], quality: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Scores for ranking metrics over several sequences: data-quality windows above every finite score."""
    finite = np.concatenate([s[np.isfinite(s)] for s in scores] or [np.empty(0)])
    top = (finite.max() if len(finite) else 0.0) + 1.0
    bottom = (finite.min() if len(finite) else 0.0) - 1.0
    out = []
    for s, q in zip(scores, quality):
        r = np.where(np.isfinite(s), s, bottom)
        out.append(np.where(q, top, r))
    return out


def point_metrics(labels: np.ndarray, score: np.ndarray, alarm: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = labels.astype(bool)
    tp = int((alarm & y).sum())
    fp = int((alarm & ~y).sum())
    fn = int((~alarm & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = 0 < y.sum() < len(y)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": float(roc_auc_score(y, score)) if both else float("nan"),
        "ap": float(average_precision_score(y, score)) if both else float("nan"),
        "n_windows": len(y),
        "n_anomalous": int(y.sum()),
    }


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [i, j) of True."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def event_metrics(seqs: Sequence[Sequence_], window_s: float) -> dict[str, object]:
    """Event recall/precision/F1, per-fault-type recall and mean detection delay over several sequences."""
    detected, total, delays = 0, 0, []
    per_type: dict[str, list[int]] = {}
    per_target: dict[str, list[int]] = {}
    runs_hit, runs_total = 0, 0
    for seq in seqs:
        alarm_t = seq.end_s[seq.alarm & seq.valid]
        spans = [(f.start_s, f.end_s + window_s) for f in seq.faults]
        for f, (a, b) in zip(seq.faults, spans):
            hits = alarm_t[(alarm_t > a) & (alarm_t < b + 1e-9)]
            ok = len(hits) > 0
            total += 1
            detected += ok
            per_type.setdefault(f.fault, [0, 0])
            per_type[f.fault][0] += ok
            per_type[f.fault][1] += 1
            key = f"{f.fault} {getattr(f, 'target', '')}".strip()
            per_target.setdefault(key, [0, 0])
            per_target[key][0] += ok
            per_target[key][1] += 1
            if ok:
                delays.append(float(hits.min() - f.start_s))
        for i, j in _runs(seq.alarm & seq.valid):
            runs_total += 1
            t0, t1 = seq.end_s[i], seq.end_s[j - 1]
            runs_hit += any(t1 > a and t0 < b for a, b in spans)
    recall = detected / total if total else 0.0
    precision = runs_hit / runs_total if runs_total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "event_precision": precision,
        "event_recall": recall,
        "event_f1": f1,
        "mean_delay_s": float(np.mean(delays)) if delays else float("nan"),
        "events": total,
        "per_fault_recall": {k: v[0] / v[1] for k, v in sorted(per_type.items())},
        "per_target_detected": {k: v for k, v in sorted(per_target.items())},  # [detected, events]
    }


def _ramp_labels(labels: np.ndarray, buffer: int) -> np.ndarray:
    """Binary labels widened by a linear ramp of ``buffer`` windows on each side of every anomalous run."""
    soft = labels.astype(np.float64)
    if buffer <= 0:
        return soft
    idx = np.arange(len(labels))
    for i, j in _runs(labels.astype(bool)):
        left = (idx >= i - buffer) & (idx < i)
        right = (idx >= j) & (idx < j + buffer)
        soft[left] = np.maximum(soft[left], 1.0 - (i - idx[left]) / (buffer + 1))
        soft[right] = np.maximum(soft[right], 1.0 - (idx[right] - j + 1) / (buffer + 1))
    return soft


def vus_pr(
    labels_per_seq: Sequence[np.ndarray], scores_per_seq: Sequence[np.ndarray], max_buffer: int, steps: int = 5
) -> float:
    """Volume under the range-PR surface (mean over buffer lengths 0..max_buffer windows)."""
    buffers = np.unique(np.linspace(0, max_buffer, steps).round().astype(int))
    score = np.concatenate(scores_per_seq)
    order = np.argsort(-score, kind="stable")
    areas = []
    for b in buffers:
        soft = np.concatenate([_ramp_labels(lab, int(b)) for lab in labels_per_seq])[order]
        if soft.sum() == 0:
            continue
        tp = np.cumsum(soft)
        precision = tp / np.arange(1, len(soft) + 1)
        recall = tp / soft.sum()
        areas.append(float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision)))
    return float(np.mean(areas)) if areas else float("nan")


def evaluate_sequences(seqs: Sequence[Sequence_], window_s: float, stride_s: float) -> dict[str, object]:
    """All metrics over several test sequences of one severity, plus ROC-AUC per fault type."""
    ranked = ranking_scores([s.score for s in seqs], [s.quality for s in seqs])
    labels_all, _which_all, scores_all, alarms_all, lab_seq, score_seq, type_all = [], [], [], [], [], [], []
    for seq, rs in zip(seqs, ranked):
        labels, which = window_labels(seq.start_s, seq.end_s, seq.faults)
        keep = seq.valid & (labels >= 0)
        types = np.array([seq.faults[k].fault if k >= 0 else "" for k in which], dtype=object)
        labels_all.append(labels[keep])
        type_all.append(types[keep])
        scores_all.append(rs[keep])
        alarms_all.append(seq.alarm[keep])
        lab_seq.append(np.maximum(labels, 0)[seq.valid])
        score_seq.append(rs[seq.valid])
    y, sc, al, ty = (np.concatenate(a) for a in (labels_all, scores_all, alarms_all, type_all))
    out: dict[str, object] = point_metrics(y, sc, al)
    out.update(event_metrics(seqs, window_s))
    out["vus_pr"] = vus_pr(lab_seq, score_seq, max_buffer=round(window_s / stride_s))
    per_auc = {}
    for fault in sorted({t for t in ty if t}):
        sel = (ty == fault) | (y == 0)
        per_auc[fault] = point_metrics(y[sel], sc[sel], al[sel])["roc_auc"]
    out["per_fault_auc"] = per_auc
    return out
