"""What the live time-series scorer reports on ``/diagnostics``: counters, input rates, stale signals, latency and
the level and message they add up to (ROS-free: the node turns the :class:`Health` into a DiagnosticStatus).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from flow_anomaly_ros.health import ERROR, OK, WARN, Health
from flow_anomaly_ros.timeseries.status import OK as STATUS_OK
from flow_anomaly_ros.timeseries.status import status_name

RESET_NOTICE_S = 10.0  # diagnostics keep naming the last reset (and WARN) this long, in the caller's clock


class LiveCounters:
    """What came in and went out, per input and per status (the node's callbacks and scoring thread count here)."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()  # per input source
        self.lost_in_transport: Counter[str] = Counter()  # per input source, from publisher sequence-number gaps
        self.received_can_id: Counter[int] = Counter()
        self.rejected = 0  # messages the core (or the node) refused; categories are in the core's counters
        self.last_rejection = ""
        self.windows_by_status: Counter[str] = Counter()
        self.windows_published = 0
        self.explanations_published = 0
        self.anomalies = 0
        self.last_status: int | None = None  # of the latest window published
        self.last_score = math.nan
        self.last_status_message = ""
        self.last_reset_clock = -math.inf  # caller's clock at the latest reset
        self.processing_errors = 0
        self.last_processing_error = ""
        self._rate_snapshot: tuple[float, Counter[str], Counter[int]] | None = None
        self.rates: tuple[dict[str, float], dict[int, float]] = ({}, {})

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.last_rejection = reason

    def published(self, status: int, score: float, status_message: str, is_anomaly: bool) -> None:
        self.windows_published += 1
        self.windows_by_status[status_name(status)] += 1
        self.anomalies += int(is_anomaly)
        self.last_status, self.last_score, self.last_status_message = status, score, status_message

    def error(self, text: str) -> None:
        self.processing_errors += 1
        self.last_processing_error = text

    def input_rates(self, now: float) -> tuple[dict[str, float], dict[int, float]]:
        """Receive rates (Hz) per input source and per CAN id since the previous call (``now``: caller's clock)."""
        received, by_id = Counter(self.received), Counter(self.received_can_id)
        if self._rate_snapshot is not None:
            t_prev, old, old_id = self._rate_snapshot
            if now - t_prev > 0:
                dt = now - t_prev
                self.rates = (
                    {k: (received[k] - old[k]) / dt for k in received},
                    {k: (by_id[k] - old_id[k]) / dt for k in by_id},
                )
        self._rate_snapshot = (now, received, by_id)
        return self.rates


def signal_status(
    config: Any,
    source_rates: dict[str, float],
    id_rates: dict[int, float],
    last_stamps: list[float | None],
    newest_stamp: float,
) -> tuple[dict[str, float], list[str]]:
    """Per model signal: input rate (its IMU topic or CAN id) and whether it is stale in message time, from the
    newest stamp of each signal and of all input."""
    rates, stale = {}, []
    db = None
    for spec, last in zip(config.signals, last_stamps):
        if spec.is_imu:
            rates[spec.name] = source_rates.get(spec.imu_source, 0.0)
        elif not spec.is_can:  # a registry stream (GNSS ...): its topic, counted under the stream's name
            rates[spec.name] = source_rates.get(spec.stream_name, 0.0)
        else:
            if db is None:
                from flow_anomaly_ros.timeseries.signals import load_dbc

                db = load_dbc(config.dbc)
            rates[spec.name] = id_rates.get(db.get_message_by_name(spec.can_message).frame_id, 0.0)
        if math.isfinite(newest_stamp) and (last is None or newest_stamp - last > spec.staleness_s):
            stale.append(spec.name)
    return rates, stale


def live_health(live: Any, counters: LiveCounters, queue: Any, now: float, extra: dict[str, Any]) -> Health:
    """Health of a :class:`~flow_anomaly_ros.timeseries.live_scoring.LiveScoring` around a StreamingScorer.

    Copies under the locks, the work outside: scoring takes both locks for every window, and this runs on another
    thread (the executor's), so whatever it does while holding them adds to that window's latency. ``now`` is the
    caller's clock (the clock of ``last_reset_clock``); ``extra`` (scheduling, input path) is reported as given.
    """
    scorer = live.target
    proc, score, wait, poll = (w.summary_ms() for w in live.latency.copies())
    with live.lock:
        core = dict(scorer.counters)
        last_stamps = [buf.last_stamp for buf in scorer.featurizer.signal_buffer]
        newest_stamp = live.newest_stamp
    signal_rates, stale = signal_status(scorer.config, *counters.input_rates(now), last_stamps, newest_stamp)
    c = counters
    dropped = queue.dropped
    lost = sum(c.lost_in_transport.values())
    values: dict[str, Any] = {
        "model_id": scorer.model_id,
        "threshold": float(scorer.threshold),
        "windows_published": c.windows_published,
        "anomalies": c.anomalies,
        "explanations_published": c.explanations_published,
        "last_status": status_name(c.last_status) if c.last_status is not None else "none yet",
        "last_score": float(c.last_score),
        "stale_signals": ",".join(stale),
        "dropped": dropped,
        "lost_in_transport": lost,
        "rejected": c.rejected,
        "last_rejection": c.last_rejection,
        "queue_depth": len(queue),
        "queue_size": queue.capacity,
        "resets": live.resets,
        "processing_latency_p50_ms": proc["p50_ms"],
        "processing_latency_p99_ms": proc["p99_ms"],
        "score_latency_p50_ms": score["p50_ms"],
        "score_latency_p99_ms": score["p99_ms"],
        "queue_wait_p50_ms": wait["p50_ms"],
        "queue_wait_p99_ms": wait["p99_ms"],
        "scoring_time_p50_ms": poll["p50_ms"],
        "scoring_time_p99_ms": poll["p99_ms"],
        "windows_prepared_ahead": scorer.featurizer.prepared_windows,
        **extra,
    }
    values.update({f"received.{k}": n for k, n in sorted(c.received.items())})
    values.update({f"rate_hz.{k}": r for k, r in sorted(c.rates[0].items())} if c.rates else {})
    values.update({f"signal_rate_hz.{k}": r for k, r in signal_rates.items()})
    values.update({f"windows.{k}": n for k, n in sorted(c.windows_by_status.items())})
    values.update({f"core.{k}": v for k, v in sorted(core.items())})
    level, message = OK, "scoring"
    if c.last_status is None:
        level, message = WARN, "no window scored yet (waiting for input)"
    elif c.last_status != STATUS_OK:
        level, message = WARN, f"{status_name(c.last_status)}: {c.last_status_message}"
    if stale:
        level, message = WARN, f"{message}; stale: {', '.join(stale)}"
    if dropped or lost or c.rejected:
        level = max(level, WARN)
        message += f"; {dropped} dropped, {lost} lost in transport, {c.rejected} rejected messages"
    if live.resets and now - c.last_reset_clock < RESET_NOTICE_S:
        level, message = max(level, WARN), f"{message}; {live.last_reset_reason}"
    if live.last_reset_reason:
        values["last_reset_reason"] = live.last_reset_reason
    if c.processing_errors:
        level, message = ERROR, f"{message}; processing errors: {c.last_processing_error}"
        values["processing_errors"] = c.processing_errors
    return Health(level, message, values)
