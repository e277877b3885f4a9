"""Live scoring: messages of several topics in, final windows out (ROS-free; the node's core, and offline's driver).

Each input topic arrives in stamp order, but the topics are not in step with each other (a middleware takes one
message per topic in turn, so under load the low-rate IMU runs ahead of CAN). :class:`LiveScoring` decides when a
window is final and what its published status is:

- watermark: a window is scored once every input topic has passed its end, except a topic that is silent: no
  message for its allowance of receipt time (``max_input_wait_s`` plus the topic's own message period, so a 1 Hz
  GNSS between two fixes is not silent), none waiting for it (the caller's ``BACKLOG`` markers say when a topic's
  messages are still queued in the middleware), and behind the topic moving the watermark by more than its
  allowance of message time too (so a stall of the whole sender, after which every topic looks silent, is not
  mistaken for one). Windows scored without waiting for a topic that had not reached their end are
  published as STALE_INPUT, never as valid scores of incomplete input. Found under a CPU hog: the input thread
  drains at most ``drain_max`` messages per topic and round, so the 100 Hz IMU ran seconds of message time ahead of
  a backlogged 1 kHz CAN topic whose last *processed* message was then over 0.5 s old, and windows were closed
  without CAN data and published OK with different scores. Before that, the next window's
  signal part is prepared as soon as the inputs are final up to its last tick (exact, see
  :meth:`WindowFeaturizer.prepare`), so only the rest is left on the latency path;
- end of the stream: once every input is silent past its allowance and none is backlogged, the sender stopped
  (a replay ended, or every sensor is down); each topic arrives in order, so everything sent up to the newest stamp
  is in, and :meth:`flush_when_quiet` scores the windows up to it, as the offline path's end of stream does
  (without it a bag's last windows would wait forever for the next fix of a low-rate input);
- clock jump: a stamp more than ``clock_jump_back_s`` behind its topic's newest one (a looping bag) resets the core;
  the reason is named in the status message of the windows after it, until one of them is OK;
- drops and losses: every window overlapping a stamp that was dropped (queue full) or lost in transport (a gap in
  a publisher's sequence numbers) is published as INVALID_INPUT, never as a valid score;
- silence: with every input silent for ``input_timeout_s``, message time is advanced by the caller's clock so that
  the core reports STALE_INPUT instead of going quiet.

The offline driver (:func:`flow_anomaly_ros.timeseries.pipeline.score_recording`) is the in-order case: one topic
(the whole recording, merged in stamp order), no clock jumps, nothing dropped, nothing silent, so a recording scored
offline gives exactly the scores the node publishes.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from flow_anomaly_ros.stats import LatencyWindow
from flow_anomaly_ros.timeseries.status import INVALID_INPUT, OK, STALE_INPUT

DROP_NOTE = "input messages dropped (queue full) or lost in transport inside this window"
# Queue item kind of a marker, in order with a topic's events: (t, BACKLOG, topic, True when messages of the topic
# still wait in the middleware after the latest take, False once it was drained). See InputPump ``on_drained``.
BACKLOG = "backlog"
# A topic's period (its silence allowance beyond max_input_wait_s): moving average of its stamp steps, each capped
# so that one outage (a GNSS in a tunnel) does not make the topic's allowance minutes long.
PERIOD_ALPHA = 0.05
PERIOD_CAP_S = 5.0

# An input event as the node's conversions give it: (stamp, accel, gyro) for "imu",
# (stamp, can_id, data, dlc, is_error, is_extended) for "can", (stamp, values) for another registry stream.
Event = tuple[Any, ...]
# (results of one poll, their published form, receipt time of the message that closed them or None (silence)).
Emit = Callable[[list[Any], list[Any], "float | None"], None]


class DropMarks:
    """The stamps of dropped or lost messages not yet covered by a published window (thread-safe: input threads
    note drops while the scoring thread marks windows)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lo, self.hi = math.inf, -math.inf

    def note(self, stamp: float) -> None:
        if not math.isfinite(stamp):
            return
        with self._lock:
            self.lo = min(self.lo, stamp)
            self.hi = max(self.hi, stamp)

    def clear(self) -> None:
        with self._lock:
            self.lo, self.hi = math.inf, -math.inf

    def covers(self, start_s: float, end_s: float) -> bool:
        """Whether a drop falls in the window ``[start_s, end_s)``; forgets the drops before a window past them."""
        with self._lock:
            hit = self.lo < end_s and self.hi >= start_s
            if start_s > self.hi:
                self.lo, self.hi = math.inf, -math.inf
            return hit


class SequenceGaps:
    """Messages lost in transport, from gaps in each publisher's sequence numbers (best-effort QoS overwrites them
    when the receiver falls behind). The lost ones were stamped between the topic's previous message and this one,
    so both stamps are marked: the windows over that stretch become INVALID_INPUT like drops of the own queue."""

    def __init__(self, marks: DropMarks) -> None:
        self._marks = marks
        self._last_seq: dict[bytes, int] = {}  # per publisher (gid): latest publication sequence number
        self._last_stamp_of: dict[str, float] = {}  # per input topic: stamp of the latest message received

    def check(self, topic: str, stamp: float, seq: int | None, publisher: bytes | None) -> int:
        """Messages lost before this one (0 when the sequence is unknown or has no gap)."""
        lost = 0
        if seq and publisher:
            last = self._last_seq.get(publisher)
            if last is not None and seq > last + 1:
                lost = seq - last - 1
                self._marks.note(self._last_stamp_of.get(topic, stamp))
                self._marks.note(stamp)
            if last is None or seq > last:
                self._last_seq[publisher] = seq
        self._last_stamp_of[topic] = stamp
        return lost


@dataclasses.dataclass
class LiveLatency:
    """Where time goes (seconds): ``proc`` receipt -> event processed (pushed, windows scored, published),
    ``score`` receipt of the message closing a window -> its score published, ``queue_wait`` receipt -> taken off
    the queue, ``poll`` wall time of a core poll that scored windows (features + model)."""

    proc: LatencyWindow = dataclasses.field(default_factory=lambda: LatencyWindow(20000))
    score: LatencyWindow = dataclasses.field(default_factory=lambda: LatencyWindow(1000))
    queue_wait: LatencyWindow = dataclasses.field(default_factory=lambda: LatencyWindow(20000))
    poll: LatencyWindow = dataclasses.field(default_factory=lambda: LatencyWindow(1000))
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def copies(self) -> tuple[LatencyWindow, LatencyWindow, LatencyWindow, LatencyWindow]:
        """(proc, score, queue_wait, poll) copied under the lock (the work on them is done outside)."""
        with self.lock:
            return self.proc.copy(), self.score.copy(), self.queue_wait.copy(), self.poll.copy()


class LiveScoring:
    """Watermark, clock-jump reset, drop/loss marks and silence advance around a :class:`StreamingScorer` (or a
    bare :class:`WindowFeaturizer`: offline feature extraction).

    ``emit(results, published, t_trigger)`` gets every poll's windows while the scoring gate is held: ``results`` as
    the core made them (for a later ``explain``), ``published`` as they go out (drops and the last reset marked,
    see :meth:`published`; the same objects when there is nothing to mark), ``t_trigger`` the receipt time of the
    message that closed them (None when silence advanced time). ``on_reset(reason)`` and ``on_reject(reason)``
    tell the caller (logging, counters). ``clock()`` is the caller's clock for silence (the node's ROS clock).
    """

    def __init__(
        self,
        target: Any,
        inputs: Sequence[str],
        emit: Emit,
        *,
        clock_jump_back_s: float = math.inf,
        max_input_wait_s: float = math.inf,
        input_timeout_s: float = 0.0,
        prepare_ahead: bool = True,
        explain_in_poll: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_reset: Callable[[str], None] | None = None,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.featurizer = getattr(target, "featurizer", target)
        self.inputs = list(inputs)  # the topics the watermark waits for
        self.emit = emit
        self.clock_jump_back_s = clock_jump_back_s
        self.max_input_wait_s = max_input_wait_s
        self.input_timeout_s = input_timeout_s
        self.prepare_ahead = prepare_ahead
        self.clock = clock
        self.on_reset = on_reset or (lambda reason: None)
        self.on_reject = on_reject or (lambda reason: None)
        scorer_poll = target.poll
        self._poll = scorer_poll if explain_in_poll or not hasattr(target, "explain") else self._poll_unexplained
        # The core's state: held while an event is pushed and its windows scored and published, and by readers.
        self.lock = threading.Lock()
        # Held while a window is scored and published; input threads pass through it (:meth:`wait_for_scoring`)
        # before each round of takes. Scoring releases the GIL many times (numpy, ONNX Runtime), and each time an
        # input thread would otherwise take it for a round of takes; parked here instead, it costs the scoring
        # thread at most one round per window. Messages meanwhile wait in the middleware.
        self.scoring = threading.Lock()
        self.drops = DropMarks()
        self.gaps = SequenceGaps(self.drops)
        self.latency = LiveLatency()
        self.resets = 0
        self.last_reset_reason = ""
        self._pending_reset_note = ""
        self.newest_stamp = -math.inf  # newest message time of any input
        self._newest_by_input: dict[str, float] = {}  # message time reached by each input topic
        self._last_recv_by_input: dict[str, float] = {}  # receipt time of each input topic's latest message
        self._backlogged: dict[str, bool] = {}  # input topic -> messages of it still waiting (BACKLOG markers)
        self._period: dict[str, float] = {}  # input topic -> its message period (moving average of stamp steps)
        self._skipped: dict[str, float] = {}  # inputs the latest horizon did not wait for -> message time they reached
        self._first_recv: float | None = None  # receipt time of the first input message since the start/a reset
        self.last_receipt_clock: float | None = None  # caller's clock after the latest batch (silence)
        self._last_stamp: float | None = None  # stamp of the latest event pushed (offline end of stream)
        self._poll_times: list[float] = []  # wall time of the polls that scored windows, in the current batch

    def _poll_unexplained(self, now_s: float) -> list[Any]:
        return self.target.poll(now_s, explain=False)

    def wait_for_scoring(self) -> None:
        """Let a window being scored finish first (input threads call this before each round of takes)."""
        with self.scoring:
            pass

    # ----- input ---------------------------------------------------------------------------------------------
    def process(self, batch: Sequence[tuple[float, str, str, Event]]) -> None:
        """Push a batch of ``(receipt time, kind, topic, event)`` taken off the input queue, in order."""
        t_taken = time.time()
        self._poll_times = []
        push = self.push
        for t_recv, kind, source, event in batch:
            if kind == BACKLOG:
                self._backlogged[source] = bool(event)
                continue
            push(t_recv, kind, source, event)
        self.last_receipt_clock = self.clock()
        done = time.time()
        latency = self.latency
        with latency.lock:
            for t_recv, kind, *_ in batch:
                if kind != BACKLOG:
                    latency.proc.add(done - t_recv)
                    latency.queue_wait.add(t_taken - t_recv)
            for seconds in self._poll_times:
                latency.poll.add(seconds)

    def push(self, t_recv: float, kind: str, source: str, event: Event, topic: str | None = None) -> None:
        """One event of input ``topic`` (default: ``source``, the IMU source name or ``"can"``) received at
        ``t_recv``; scores and emits the windows it completes."""
        topic = source if topic is None else topic
        stamp = event[0]
        newest_of = self._newest_by_input
        with self.lock:
            newest = newest_of.get(topic, -math.inf)
            if stamp < newest - self.clock_jump_back_s:  # within one topic: topics arrive in order, not in step
                self.reset(f"clock jumped back {newest - stamp:.3f} s on {topic} (looping bag?): state reset")
            if kind == "imu":
                reason = self.target.push_imu(stamp, event[1], event[2], source)
            elif kind == "can":
                reason = self.target.push_can(stamp, event[1], event[2], event[3], event[4], event[5])
            else:  # a registry stream (GNSS ...): (stamp, values in its module's raw layout)
                reason = self.target.push_sample(kind, stamp, event[1])
            if reason is not None:
                self.on_reject(reason)
            self._last_stamp = stamp
            # Every event moves its input's message time on, as offline (a NaN stamp never does).
            self._last_recv_by_input[topic] = t_recv
            if not stamp > newest_of.get(topic, -math.inf):
                return
            if newest > -math.inf:  # the topic's period: part of its silence allowance (see _horizon)
                step = min(stamp - newest, PERIOD_CAP_S)
                period = self._period.get(topic)
                self._period[topic] = step if period is None else period + PERIOD_ALPHA * (step - period)
            newest_of[topic] = stamp
            if stamp > self.newest_stamp:
                self.newest_stamp = stamp
            # An input not heard from yet counts as silent since the first message of any input, so the first
            # windows wait for it too (else they are scored before its first message arrives).
            if self._first_recv is None:
                self._first_recv = t_recv
            horizon = self._horizon(t_recv, stamp)
            next_end = self.featurizer.next_window_end
            if next_end is None:
                return
            if horizon < next_end:
                if self.prepare_ahead:  # inputs final up to the horizon: the next window's signal part, now
                    self.featurizer.prepare(horizon)
                return
            with self.scoring:
                t_poll = time.perf_counter()
                results = self._poll(horizon)
                if results:
                    self._poll_times.append(time.perf_counter() - t_poll)
                    self.emit(results, self.published(results), t_recv)

    def _horizon(self, t_recv: float, stamp: float) -> float:
        """Message time up to which every input that is not silent is final (the watermark)."""
        if len(self.inputs) == 1:
            return stamp  # the one input is never silent to itself
        last_recv, newest_of, first, max_wait, backlogged, period = (
            self._last_recv_by_input,
            self._newest_by_input,
            self._first_recv,
            self.max_input_wait_s,
            self._backlogged,
            self._period,
        )
        waited: list[float] = []
        skipped: dict[str, float] = {}
        for k in self.inputs:
            reached = newest_of.get(k, -math.inf)
            allowance = max_wait + period.get(k, 0.0)
            if (
                t_recv - last_recv.get(k, first) <= allowance  # heard from recently
                or backlogged.get(k, False)  # its messages wait in the middleware
                or stamp - reached <= allowance  # not behind in message time: the sender stalled, not the topic
            ):
                waited.append(reached)
            else:
                skipped[k] = reached
        self._skipped = skipped
        return min(waited, default=stamp)  # this event's own input is never silent

    # ----- state changes -------------------------------------------------------------------------------------
    def reset(self, reason: str) -> None:
        """Forget the core's samples and the watermark (the clock jumped back); called with :attr:`lock` held."""
        self.target.reset(reason)
        self.resets += 1
        self.last_reset_reason = reason
        self._pending_reset_note = reason
        self.newest_stamp = -math.inf
        self._newest_by_input.clear()
        self._last_recv_by_input.clear()
        self._backlogged.clear()
        self._period.clear()
        self._skipped = {}
        self._first_recv = None
        self.drops.clear()
        self.on_reset(reason)

    def advance_when_silent(self) -> None:
        """All inputs silent for ``input_timeout_s`` (caller's clock): move message time on so that the core can
        report STALE_INPUT instead of going quiet."""
        timeout = self.input_timeout_s
        if timeout <= 0 or self.last_receipt_clock is None or not math.isfinite(self.newest_stamp):
            return
        silent_s = self.clock() - self.last_receipt_clock
        if silent_s <= timeout:
            return
        horizon = self.newest_stamp + silent_s - self.max_input_wait_s
        with self.lock:
            self._skipped = {}  # every input is silent: the core itself reports the windows STALE_INPUT
            results = self._poll(horizon)
            if results:
                self.emit(results, self.published(results), None)

    def flush_when_quiet(self, now: float | None = None) -> None:
        """Every input silent past its allowance (receipt time, ``now`` default :func:`time.time`) and none
        backlogged: score the windows up to the newest stamp received, as :meth:`finish` does offline (see the
        module docstring: end of the stream)."""
        if not math.isfinite(self.max_input_wait_s) or not math.isfinite(self.newest_stamp):
            return
        now = time.time() if now is None else now
        with self.lock:
            next_end = self.featurizer.next_window_end
            if next_end is None or next_end > self.newest_stamp or any(self._backlogged.values()):
                return
            last_recv, first, period = self._last_recv_by_input, self._first_recv, self._period
            for k in self.inputs:
                heard = last_recv.get(k, first)
                if heard is None or now - heard <= self.max_input_wait_s + period.get(k, 0.0):
                    return
            self._skipped = {}  # nothing more is coming for any input: what is in is the whole stream so far
            with self.scoring:
                results = self._poll(self.newest_stamp)
                if results:
                    self.emit(results, self.published(results), None)

    def finish(self) -> None:
        """End of an offline stream: score what the last event's stamp completes."""
        self._poll_times = []
        if self._last_stamp is not None:
            with self.lock:
                results = self._poll(self._last_stamp)
                if results:
                    self.emit(results, results, None)

    # ----- output --------------------------------------------------------------------------------------------
    def published(self, results: list[Any]) -> list[Any]:
        """``results`` as published, in order: a window over a dropped or lost message is INVALID_INPUT (not
        anomalous), and the windows after a reset name it until one is OK. Unmarked results are kept as they are;
        marked ones are copies, so the core's results stay valid for ``explain``."""
        out = []
        for result in results:
            status, message = result.status, result.status_message
            if self.drops.covers(result.start_s, result.end_s):  # window is [start, end)
                status = INVALID_INPUT if status == OK else status
                message = "; ".join(m for m in (message, DROP_NOTE) if m)
            short = [k for k, reached in self._skipped.items() if reached < result.end_s] if status == OK else []
            if short:  # scored without the rest of these inputs: not a measurement of the window's input
                status = STALE_INPUT
                note = f"scored without waiting for {', '.join(short)} (silent past max_input_wait_s + its period)"
                message = "; ".join(m for m in (message, note) if m)
            if self._pending_reset_note:
                message = "; ".join(m for m in (message, self._pending_reset_note) if m)
                if status == OK:
                    self._pending_reset_note = ""
            if (status, message) != (result.status, result.status_message):
                result = dataclasses.replace(
                    result, status=status, status_message=message, is_anomaly=result.is_anomaly and status == OK
                )
            out.append(result)
        return out
