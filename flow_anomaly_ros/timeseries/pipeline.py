"""Streaming scorer: raw IMU samples and CAN frames in, one :class:`WindowResult` per window stride out.

This is the single code path for live (the ROS node) and offline scoring (:func:`score_recording`, evaluation,
training-feature extraction), so a recording scored offline gives exactly the scores the node publishes.

Timing model (deterministic, independent of when ``poll`` is called):
- windows end on a fixed grid ``k * stride`` and cover ``[end - window, end)``; their samples are resampled to
  ``rate_hz`` by hold-last (:mod:`flow_anomaly_ros.timeseries.resample`);
- ``poll(now)`` finalises every window with ``end <= now``. A sample with a stamp before the last finalised end is
  *late* and rejected (counted). The node should therefore poll with ``now`` = newest stamp minus the lateness it
  tolerates; offline, events are pushed in stamp order and each window is finalised just before the first event at
  or after its end;
- per signal, a sample older than the previous one is rejected as out-of-order, an equal stamp as duplicate.

Window status (values of ``AnomalyScore.msg``): OK; WARMING_UP before every signal has data; STALE_INPUT when a
signal's hold-last age exceeds its staleness limit inside the window (dropout, suspended CAN message);
INVALID_INPUT when a rejected sample (NaN/Inf, DLC mismatch, undecodable, out-of-order) falls inside the window;
MODEL_ERROR when scoring fails. Non-OK windows have ``score = NaN`` and ``is_anomaly = False``; STALE and INVALID
windows set ``data_quality_fault = True``: a dropout or a NaN burst *is* a fault, and the evaluation counts such a
window as detected by the data-quality monitor (for every detector alike).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros import streams
from flow_anomaly_ros.model_store import ModelFileError, load_model_dir, model_id, read_manifest
from flow_anomaly_ros.timeseries.detectors import KIND_PREFIX, Detector, detector_from_loaded
from flow_anomaly_ros.timeseries.events import KIND_CAN, KIND_IMU, CanFrame, ImuSample, Recording, StreamSample
from flow_anomaly_ros.timeseries.features import CanTiming, FeatureLayout
from flow_anomaly_ros.timeseries.live_scoring import LiveScoring
from flow_anomaly_ros.timeseries.normalise import RobustNormaliser
from flow_anomaly_ros.timeseries.resample import SampleBuffer
from flow_anomaly_ros.timeseries.signals import IMU_FIELDS, ConfigError, PipelineConfig, load_dbc, resolve_dbc_path
from flow_anomaly_ros.timeseries.status import (
    INVALID_INPUT,
    MODEL_ERROR,
    OK,
    STALE_INPUT,
    STATUS_NAMES,  # noqa: F401  (re-exported: pipeline.STATUS_NAMES callers)
    WARMING_UP,
)

MAX_BACKLOG_WINDOWS = 600  # poll() never emits more than this many windows at once (a huge time jump skips ahead)
# Buffers drop samples no future window needs every this many polls, not on every one: the search per buffer is
# ~5% of a window's work on the node's latency path, and the few extra samples kept in between change nothing.
TRIM_EVERY_POLLS = 10
INVALID_REASONS = ("nan", "dlc", "undecodable", "out_of_order", "late")


@dataclass
class WindowResult:
    """One scored window (one per stride); ``contributions`` is empty where they were not computed."""

    start_s: float
    end_s: float
    score: float
    threshold: float
    is_anomaly: bool
    status: int
    status_message: str
    feature_names: list[str]
    contributions: list[float]
    data_quality_fault: bool = False
    features: np.ndarray | None = field(default=None, repr=False)  # the window's features (OK windows), for explain


@dataclass
class WindowFeatures:
    start_s: float
    end_s: float
    features: np.ndarray | None
    status: int
    status_message: str
    data_quality_fault: bool


@dataclass
class _CanEntry:
    message: Any
    length: int
    signals: list[tuple[str, float]]  # (DBC signal, si_scale), in the column order of ``stream``
    timing_index: int | None
    stream: SampleBuffer | None = None  # decoded values of the message's signals, one row per frame


@dataclass
class _RegistryStream:
    """A registry stream other than IMU/CAN (GNSS ...): its kind, the per-topic state its columns derive from, the
    buffer of its signals, and which of the kind's fields they are with their SI scales."""

    kind: Any  # flow_anomaly_ros.streams.StreamKind
    buffer: SampleBuffer
    field_index: np.ndarray
    scale: np.ndarray
    state: Any = None
    last: float | None = None

    def restart(self) -> None:
        self.state = self.kind.new_state() if self.kind.new_state is not None else None
        self.last = None


@dataclass
class _Stream:
    """Signals that always arrive together (one IMU source, one CAN message): one buffer, a column each."""

    buffer: SampleBuffer
    columns: np.ndarray  # signal indices, in column order
    limits: list[tuple[int, float]]  # (signal index, staleness limit s)


class WindowFeaturizer:
    """Push raw events, poll window features. Owns buffers, counters and the window grid (no model)."""

    def __init__(self, config: PipelineConfig, stride_s: float | None = None) -> None:
        self.config = config.validate()
        self.layout = FeatureLayout(self.config)
        stride = self.config.stride_s if stride_s is None else stride_s
        self.stride_ticks = round(stride * self.config.rate_hz)
        if self.stride_ticks < 1 or abs(stride * self.config.rate_hz - self.stride_ticks) > 1e-6:
            raise ConfigError(f"stride_s={stride} must be a whole number of samples at {self.config.rate_hz} Hz")
        self.window_ticks = self.config.window_ticks
        self._tick_offsets = np.arange(self.window_ticks, dtype=np.float64)
        signals = self.config.signals
        self.staleness = np.array([s.staleness_s for s in signals])
        # One buffer per stream, not per signal: the window's hold-last search and staleness check then run once
        # per IMU source and CAN message (7 here) instead of once per signal (16), on the node's latency path.
        self._streams: list[_Stream] = []

        def stream(indices: list[int]) -> SampleBuffer:
            buf = SampleBuffer(width=len(indices))
            limits = [(i, float(self.staleness[i])) for i in indices]
            self._streams.append(_Stream(buf, np.array(indices, dtype=np.intp), limits))
            return buf

        imu_fields: dict[str, list[tuple[int, int, float]]] = {}
        for i, s in enumerate(signals):
            if s.is_imu:
                imu_fields.setdefault(s.imu_source, []).append((IMU_FIELDS.index(s.imu_field), i, s.si_scale))
        # per IMU source: (its buffer, the IMU_FIELDS index of each column, the column's SI scale)
        self.imu_map: dict[str, tuple[SampleBuffer, np.ndarray, np.ndarray]] = {}
        for source, fields in imu_fields.items():
            buf = stream([i for _, i, _ in fields])
            self.imu_map[source] = (buf, np.array([f for f, _, _ in fields]), np.array([c for _, _, c in fields]))
        # registry streams (GNSS ...): one buffer per stream, one topic each (source = the stream's name)
        self.stream_map: dict[str, _RegistryStream] = {}
        for name in self.config.streams:
            if name in ("imu", "can"):
                continue
            kind = streams.get(name)
            cols = [
                (i, kind.fields.index(s.stream_field), s.si_scale) for i, s in enumerate(signals) if s.stream == name
            ]
            buf = stream([i for i, _, _ in cols])
            self.stream_map[name] = _RegistryStream(
                kind, buf, np.array([f for _, f, _ in cols]), np.array([c for _, _, c in cols])
            )
        self.timing = [SampleBuffer() for _ in self.config.can_messages]
        self.can_map: dict[tuple[int, bool], _CanEntry] = {}
        if self.config.can_messages:
            db = load_dbc(self.config.dbc)
            for ti, name in enumerate(self.config.can_messages):
                try:
                    msg = db.get_message_by_name(name)
                except KeyError as exc:
                    raise ConfigError(f"message {name!r} not in DBC {self.config.dbc}") from exc
                sigs, indices = [], []
                for i, s in enumerate(signals):
                    if s.can_message == name:
                        if s.can_signal not in {x.name for x in msg.signals}:
                            raise ConfigError(f"signal {s.can_signal!r} not in message {name} of {self.config.dbc}")
                        sigs.append((s.can_signal, s.si_scale))
                        indices.append(i)
                key = (int(msg.frame_id), bool(msg.is_extended_frame))
                self.can_map[key] = _CanEntry(msg, int(msg.length), sigs, ti, stream(indices))
            for cid in self.config.extra_expected_can_ids:
                self.can_map.setdefault((cid, cid > 0x7FF), _CanEntry(None, -1, [], None))
        self.unknown = SampleBuffer()
        self.errors = SampleBuffer()
        self.all_frames = SampleBuffer()
        self.invalid = SampleBuffer()  # value = index into INVALID_REASONS
        by_signal = {int(i): st.buffer for st in self._streams for i in st.columns}
        self.signal_buffer = [by_signal[i] for i in range(len(signals))]  # per signal: its stream's buffer
        self._buffers = (*(st.buffer for st in self._streams), *self.timing, self.unknown, self.errors)
        self._buffers += (self.all_frames, self.invalid)
        self.max_lookback = float(self.staleness.max()) + 1.0
        self.counters: dict[str, int] = {}
        self.prepared_windows = 0  # windows whose signal part came from `prepare` (not a counter: live-only work)
        self.reset("start")
        self.counters["resets"] = 0

    # --- state ----------------------------------------------------------------------------------------------
    def reset(self, reason: str) -> None:
        """Forget all samples and the window grid (e.g. the clock jumped backwards); counters are kept."""
        for b in self._buffers:
            b.clear()
        self._last_imu: dict[str, float] = {}
        for entry in self.stream_map.values():
            entry.restart()
        self._last_can: dict[tuple[int, bool], float] = {}
        self._first_stamp: float | None = None
        self._next_end_k: int | None = None
        self._finalised_end = -math.inf
        self._polls_untrimmed = 0
        self._prepared_k: int | None = None  # window (end tick) whose signal part `prepare` computed ahead
        self._prepared_tick = -math.inf  # its last tick: a sample pushed at or before it discards the part
        self._prepared: tuple[np.ndarray | None, list[int], list[tuple[int, float]]] | None = None
        self._ready = False
        self.last_reset_reason = reason
        self.counters["resets"] = self.counters.get("resets", 0) + 1

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def _check_stamp(self, stamp_s: float, what: str) -> str | None:
        if not math.isfinite(stamp_s):
            self._count(f"{what}_invalid")
            return f"{what}: non-finite stamp"
        if stamp_s < self._finalised_end:
            self._count(f"{what}_late")
            # The windows still to come that should have held this sample all contain _finalised_end: flag them
            # instead of scoring them without it (live only: offline input is in order and never late).
            self._mark_invalid(self._finalised_end, "late")
            return (
                f"{what}: stamp {stamp_s:.3f} s is before the last scored window end {self._finalised_end:.3f} s "
                "(late sample, or the clock jumped back: call reset)"
            )
        if self._first_stamp is None:
            self._first_stamp = stamp_s
        return None

    def _append_signals(self, buf: SampleBuffer, stamp_s: float, row: Any) -> None:
        """Store a sample of a stream's signals; one at or before a prepared window's last tick discards that part."""
        if stamp_s <= self._prepared_tick:
            self._prepared_k = None
        buf.append(stamp_s, row)

    def _mark_invalid(self, stamp_s: float, reason: str) -> None:
        if self.invalid.last_stamp is not None and stamp_s < self.invalid.last_stamp:
            return  # an out-of-order mark before an earlier one: the window holding it is flagged already or gone
        self.invalid.append(stamp_s, INVALID_REASONS.index(reason))

    # --- inputs ---------------------------------------------------------------------------------------------
    def push_imu(self, stamp_s: float, accel: Any, gyro: Any, source: str = "imu") -> str | None:
        """Add one IMU sample (m/s², rad/s). Returns None if accepted, else why it was rejected."""
        what = f"imu[{source}]"
        stream = self.imu_map.get(source)
        if stream is None:
            self._count("imu_unknown_source")
            return f"{what}: source not used by the model (sources: {sorted(self.imu_map)})"
        stamp_s = float(stamp_s)
        if (reason := self._check_stamp(stamp_s, what)) is not None:
            return reason
        last = self._last_imu.get(source)
        if last is not None and stamp_s <= last:
            if stamp_s == last:
                self._count(f"{what}_duplicate")
                return f"{what}: duplicate stamp {stamp_s:.6f}"
            self._count(f"{what}_out_of_order")
            self._mark_invalid(stamp_s, "out_of_order")
            return f"{what}: out-of-order stamp {stamp_s:.6f} < {last:.6f}"
        self._last_imu[source] = stamp_s
        try:
            values = np.concatenate(
                [np.asarray(accel, dtype=np.float64).reshape(3), np.asarray(gyro, dtype=np.float64).reshape(3)]
            )
        except (TypeError, ValueError):
            self._count(f"{what}_invalid")
            self._mark_invalid(stamp_s, "nan")
            return f"{what}: accel and gyro must have 3 numbers each"
        if not np.all(np.isfinite(values)):
            self._count(f"{what}_invalid")
            self._mark_invalid(stamp_s, "nan")
            return f"{what}: NaN/Inf in sample"
        buf, field_index, scale = stream
        self._append_signals(buf, stamp_s, values[field_index] * scale)
        self._count(f"{what}_accepted")
        return None

    def push_sample(self, stream: str, stamp_s: float, values: Any) -> str | None:
        """Add one sample of a registry stream other than IMU/CAN (``values`` in its module's raw layout, e.g. a
        GNSS fix). Its columns are derived by the stream module (against the previous sample of the topic). Returns
        None if accepted, else why it was rejected."""
        entry = self.stream_map.get(stream)
        if entry is None:
            self._count(f"{stream}_unused")
            return f"{stream}: stream not used by the model (streams: {self.config.streams})"
        stamp_s = float(stamp_s)
        if (reason := self._check_stamp(stamp_s, stream)) is not None:
            return reason
        if entry.last is not None and stamp_s <= entry.last:
            if stamp_s == entry.last:
                self._count(f"{stream}_duplicate")
                return f"{stream}: duplicate stamp {stamp_s:.6f}"
            self._count(f"{stream}_out_of_order")
            self._mark_invalid(stamp_s, "out_of_order")
            return f"{stream}: out-of-order stamp {stamp_s:.6f} < {entry.last:.6f}"
        entry.last = stamp_s
        try:
            raw = np.asarray(values, dtype=np.float64)
            row = raw if entry.kind.derive is None else entry.kind.derive(entry.state, stamp_s, raw)
            if row is not None:
                row = np.asarray(row, dtype=np.float64)[entry.field_index] * entry.scale
        except (TypeError, ValueError, IndexError) as exc:
            self._count(f"{stream}_invalid")
            self._mark_invalid(stamp_s, "nan")
            return f"{stream}: invalid sample: {exc}"
        if row is not None:
            if not np.all(np.isfinite(row)):
                self._count(f"{stream}_invalid")
                self._mark_invalid(stamp_s, "nan")
                return f"{stream}: NaN/Inf in sample"
            self._append_signals(entry.buffer, stamp_s, row)
        self._count(f"{stream}_accepted")
        return None

    def push_can(
        self,
        stamp_s: float,
        can_id: int,
        data: bytes | bytearray | np.ndarray,
        dlc: int | None = None,
        is_error: bool = False,
        is_extended: bool = False,
    ) -> str | None:
        """Add one CAN frame. Unknown ids and error frames are accepted and counted (they are features)."""
        stamp_s = float(stamp_s)
        if (reason := self._check_stamp(stamp_s, "can")) is not None:
            return reason
        self.all_frames.append(stamp_s)
        if is_error:
            self.errors.append(stamp_s)
            self._count("can_error_frames")
            return None
        key = (int(can_id), bool(is_extended))
        entry = self.can_map.get(key)
        if entry is None:
            self.unknown.append(stamp_s)
            self._count("can_unknown_id")
            return None
        if entry.message is None:
            self._count("can_accepted")
            return None
        raw = bytes(data)
        n = len(raw) if dlc is None else int(dlc)
        name = entry.message.name
        if n != entry.length or len(raw) < n:
            self._count("can_dlc_mismatch")
            self._mark_invalid(stamp_s, "dlc")
            return f"can {name} (0x{key[0]:X}): DLC {n} (data {len(raw)} bytes), DBC says {entry.length}"
        last = self._last_can.get(key)
        if last is not None and stamp_s <= last:
            if stamp_s == last:
                self._count("can_duplicate")
                return f"can {name}: duplicate stamp {stamp_s:.6f}"
            self._count("can_out_of_order")
            self._mark_invalid(stamp_s, "out_of_order")
            return f"can {name}: out-of-order stamp {stamp_s:.6f} < {last:.6f}"
        self._last_can[key] = stamp_s
        self.timing[entry.timing_index].append(stamp_s)
        try:
            decoded = entry.message.decode(raw[:n], decode_choices=False)
        except Exception as exc:  # cantools raises several error types for undecodable payloads
            self._count("can_undecodable")
            self._mark_invalid(stamp_s, "undecodable")
            return f"can {name}: cannot decode: {exc}"
        row = [float(decoded[sig]) * scale for sig, scale in entry.signals]
        for (sig, _), value in zip(entry.signals, row):
            if not math.isfinite(value):  # the frame's signals are kept all together or not at all
                self._count("can_undecodable")
                self._mark_invalid(stamp_s, "undecodable")
                return f"can {name}: non-finite {sig}"
        if entry.stream is not None:
            self._append_signals(entry.stream, stamp_s, row)
        self._count("can_accepted")
        return None

    # --- windows --------------------------------------------------------------------------------------------
    @property
    def next_window_end(self) -> float | None:
        if self._next_end_k is None:
            return None if self._first_stamp is None else self._first_end_k() / self.config.rate_hz
        return self._next_end_k / self.config.rate_hz

    def _first_end_k(self) -> int:
        rate = self.config.rate_hz
        k = math.floor(self._first_stamp * rate / self.stride_ticks) + 1
        return k * self.stride_ticks

    def poll(self, now_s: float) -> list[WindowFeatures]:
        """Features of every window with ``end <= now_s`` not yet emitted."""
        if self._first_stamp is None or not math.isfinite(now_s):
            return []
        rate = self.config.rate_hz
        if self._next_end_k is None:
            self._next_end_k = self._first_end_k()
        last_k = math.floor(now_s * rate + 1e-9)
        pending = (last_k - self._next_end_k) // self.stride_ticks + 1
        if pending <= 0:
            return []
        if pending > MAX_BACKLOG_WINDOWS:
            skip = pending - MAX_BACKLOG_WINDOWS
            self._next_end_k += skip * self.stride_ticks
            self._count("skipped_windows", skip)
        out = []
        while self._next_end_k <= last_k:
            out.append(self._window(self._next_end_k))
            self._next_end_k += self.stride_ticks
        self._finalised_end = (self._next_end_k - self.stride_ticks) / rate
        self._polls_untrimmed += 1
        if self._polls_untrimmed >= TRIM_EVERY_POLLS:
            self._polls_untrimmed = 0
            keep_from = (self._next_end_k - self.window_ticks) / rate - self.max_lookback
            for b in self._buffers:
                b.trim_before(keep_from)
        return out

    def prepare(self, now_s: float) -> bool:
        """Compute the next window's signal part ahead of its end, once no sample can change it; True if it did.

        The signal features (statistics of the resampled values) and the missing / stale checks depend only on the
        samples at or before the window's last tick, one tick before its end. Once ``now_s`` is past that tick, with
        the same promise as for :meth:`poll` (every sample stamped before ``now_s`` has been pushed), they are final,
        and computing them then leaves only the CAN timing, the rejected-input check and the model for the moment
        the window closes: about half of the window's work moves off the node's latency path. Optional and exact:
        a window's features are identical with or without it, and a later push at or before the prepared tick (an
        input that was not waited for comes back) discards the prepared part.
        """
        if self._first_stamp is None or not math.isfinite(now_s):
            return False
        if self._next_end_k is None:
            self._next_end_k = self._first_end_k()
        end_k = self._next_end_k
        last_tick = (end_k - 1) / self.config.rate_hz
        if self._prepared_k == end_k or not now_s > last_tick:
            return False
        self._prepared = self._signal_part(end_k)
        self._prepared_k, self._prepared_tick = end_k, last_tick
        return True

    def _signal_part(self, end_k: int) -> tuple[np.ndarray | None, list[int], list[tuple[int, float]]]:
        """(signal features, or None with missing or stale signals; missing signals; stale (signal, age))."""
        rate = self.config.rate_hz
        start_k = end_k - self.window_ticks
        # (offsets + start_k) holds the same exact integers as np.arange(start_k, end_k): identical ticks, one
        # allocation less on the per-window path.
        ticks = (self._tick_offsets + start_k) / rate
        values = np.empty((len(self.signal_buffer), len(ticks)))
        missing, stale = [], []
        for st in self._streams:  # the signals of a stream share their stamps, hence their ages
            rows, age = st.buffer.hold_last(ticks)
            values[st.columns] = rows.T
            if age[0] == math.inf:  # no sample at or before the first tick (ages are finite or +inf)
                missing += [i for i, _ in st.limits]
            else:
                oldest = float(age.max())
                stale += [(i, oldest) for i, limit in st.limits if oldest > limit]
        missing.sort()  # signal order, for the status message
        stale.sort()
        return (None if missing or stale else self.layout.signal_features(values)), missing, stale

    def _window(self, end_k: int) -> WindowFeatures:
        rate = self.config.rate_hz
        start_s, end_s = (end_k - self.window_ticks) / rate, end_k / rate
        if self._prepared_k == end_k:
            signal_features, missing, stale = self._prepared
            self.prepared_windows += 1
        else:
            signal_features, missing, stale = self._signal_part(end_k)
        self._prepared_k, self._prepared_tick, self._prepared = None, -math.inf, None
        names = self.config.signal_names
        if missing and not self._ready:
            return WindowFeatures(
                start_s, end_s, None, WARMING_UP, f"waiting for data: {', '.join(names[i] for i in missing)}", False
            )
        self._ready = True
        invalid = self.invalid.stamps_in(start_s, end_s)
        if len(invalid):
            lo = int(np.searchsorted(self.invalid.stamps, start_s))
            codes = self.invalid.values[lo : lo + len(invalid)].astype(int)
            kinds = ", ".join(f"{INVALID_REASONS[c]} x{int((codes == c).sum())}" for c in np.unique(codes))
            return WindowFeatures(
                start_s, end_s, None, INVALID_INPUT, f"{len(invalid)} rejected input(s) in window ({kinds})", True
            )
        if missing or stale:
            parts = [f"{names[i]} no data" for i in missing]
            parts += [f"{names[i]} silent {age:.2f} s > {self.staleness[i]:.2f} s" for i, age in stale]
            return WindowFeatures(start_s, end_s, None, STALE_INPUT, "stale input: " + "; ".join(parts), True)
        timing = None
        if self.config.can_timing:
            spans = [b.span(start_s, end_s) for b in self.timing]
            timing = CanTiming(
                stamps=[stamps for stamps, _ in spans],
                previous=[prev for _, prev in spans],
                unknown_count=self.unknown.count_in(start_s, end_s),
                error_count=self.errors.count_in(start_s, end_s),
                total_count=self.all_frames.count_in(start_s, end_s),
            )
        features = self.layout.assemble(signal_features, timing, start_s, end_s)
        return WindowFeatures(start_s, end_s, features, OK, "", False)


# ------------------------------------------------------------------------------------------------------------
@dataclass
class TimeseriesModel:
    """A trained model: pipeline config + normaliser + detector (+ manifest when loaded)."""

    config: PipelineConfig
    normaliser: RobustNormaliser
    detector: Detector
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return FeatureLayout(self.config).names

    @property
    def model_id(self) -> str:
        return model_id(self.manifest) if self.manifest else f"{KIND_PREFIX}/{self.detector.name}@unsaved"

    def score_windows(self, features: np.ndarray) -> np.ndarray:
        """Score feature rows one window at a time.

        Batched inference (ONNX Runtime, BLAS) may round differently for different batch sizes; scoring every
        window as a batch of one makes a window's score independent of how many windows a ``poll`` happened to
        finalise, so live, offline and evaluation scores are bit-identical.
        """
        z = self.normaliser.transform(np.atleast_2d(features))
        return np.array([self.detector.decision_function(z[i : i + 1])[0] for i in range(len(z))])

    def save(self, path: str | Path, training: dict[str, Any] | None = None) -> Path:
        extra = {
            "pipeline": self.config.to_dict(),
            "feature_names": self.feature_names,
            "normaliser": {"kind": "robust_median_iqr", "clip": self.normaliser.clip},
            "training": training or {},
        }
        files = {}
        if self.config.can_messages:  # the DBC travels with the model (see load_timeseries_model)
            dbc_path = resolve_dbc_path(self.config.dbc)
            extra["dbc_bundled"] = f"{dbc_path.stem}.dbc"
            files[extra["dbc_bundled"]] = dbc_path.read_bytes()
        out = self.detector.save(path, extra_manifest=extra, extra_tensors=self.normaliser.tensors(), extra_files=files)
        self.manifest = read_manifest(out)
        return out


def load_timeseries_model(path: str | Path, expected_detector: str | None = None) -> TimeseriesModel:
    """Load and validate a model directory written by ``flow-anomaly ts train``; ModelFileError on any problem."""
    path = Path(path)
    kind = f"{KIND_PREFIX}/{expected_detector}" if expected_detector else KIND_PREFIX
    manifest, tensors = load_model_dir(path, expected_kind=kind)
    if "pipeline" not in manifest:
        raise ModelFileError(f"model at {path} has no 'pipeline' section (a bare detector, not a time-series model)")
    try:
        config = PipelineConfig.from_dict(manifest["pipeline"])
        bundled = manifest.get("dbc_bundled")
        if bundled:
            # Decode with the DBC copied into the model directory at save time (checksummed by load_model_dir):
            # a model trained with /home/me/car.dbc or an opendbc DBC loads on a vehicle that has neither path,
            # and an opendbc upgrade cannot silently change the decoding. The file keeps the DBC's name, so the
            # node's dbc_file check (same DBC name) still applies.
            config = dataclasses.replace(config, dbc=str(path / bundled))
        layout = FeatureLayout(config)
    except (ConfigError, FileNotFoundError, KeyError) as exc:
        raise ModelFileError(f"model at {path}: its feature pipeline cannot be rebuilt here: {exc}") from exc
    if manifest.get("feature_names") != layout.names:
        raise ModelFileError(
            f"model at {path}: feature names in the manifest do not match what its pipeline config produces "
            "(model written by another version of the feature code?)"
        )
    try:
        normaliser = RobustNormaliser.from_tensors(tensors, clip=float(manifest["normaliser"]["clip"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model at {path}: normaliser missing or invalid: {exc}") from exc
    if normaliser.center.shape != (layout.dim,) or normaliser.scale.shape != (layout.dim,):
        raise ModelFileError(
            f"model at {path}: normaliser has shape {normaliser.center.shape}, expected ({layout.dim},)"
        )
    detector = detector_from_loaded(manifest, tensors, path)
    if detector.n_features_ != layout.dim:
        raise ModelFileError(
            f"model at {path}: detector expects {detector.n_features_} features, pipeline gives {layout.dim}"
        )
    if detector.threshold_ is None:
        raise ModelFileError(f"model at {path} has no calibrated threshold")
    return TimeseriesModel(config, normaliser, detector, manifest)


# ------------------------------------------------------------------------------------------------------------
CONTRIBUTIONS = ("all", "anomalous", "none")  # which windows StreamingScorer explains feature by feature


class StreamingScorer:
    """Featurizer + model: the live node and offline scoring both use this class.

    ``contributions`` says which windows get per-feature contributions: ``"all"``, ``"anomalous"`` (only windows
    over the threshold: the attribution is one model pass over d + 1 rows, ~4x the cost of the score itself, and
    the question it answers is why a window was flagged) or ``"none"``. Detectors without attribution give none.
    """

    def __init__(self, model: TimeseriesModel, contributions: str = "all") -> None:
        if contributions not in CONTRIBUTIONS:
            raise ValueError(f"contributions={contributions!r}: choose one of {', '.join(CONTRIBUTIONS)}")
        self.model = model
        self.featurizer = WindowFeaturizer(model.config)
        has = hasattr(model.detector, "contributions")
        self.contributions = contributions if has else "none"
        self.with_contributions = self.contributions != "none"
        self.feature_names = model.feature_names
        self.signal_names = model.config.signal_names
        self.threshold = float(model.detector.threshold_)
        self.model_id = model.model_id

    @classmethod
    def from_model_dir(cls, path: str | Path, contributions: str = "all") -> StreamingScorer:
        """Load a model directory; raises ModelFileError with a clear message on any problem."""
        return cls(load_timeseries_model(path), contributions=contributions)

    def warm_up(self) -> None:
        """Run the model once on the median window (score and, if enabled, contributions); raises if it cannot.

        Inference back-ends set up lazily (session creation, first-run allocations for each batch shape: up to
        ~100 ms here), which the first live window would otherwise pay for. Stateless: scores are unaffected.
        """
        x = self.model.normaliser.center[None, :].astype(np.float64)  # normalises to zeros: a typical window
        score = self.model.score_windows(x)
        if not np.all(np.isfinite(score)):
            raise ValueError(f"model returned a non-finite score ({score[0]}) for the median training window")
        if self.with_contributions:
            self.model.detector.contributions(self.model.normaliser.transform(x))

    @property
    def counters(self) -> dict[str, int]:
        return self.featurizer.counters

    @property
    def config(self) -> PipelineConfig:
        return self.model.config

    def push_imu(self, stamp_s: float, accel: Any, gyro: Any, source: str = "imu") -> str | None:
        return self.featurizer.push_imu(stamp_s, accel, gyro, source)

    def push_sample(self, stream: str, stamp_s: float, values: Any) -> str | None:
        return self.featurizer.push_sample(stream, stamp_s, values)

    def push_can(
        self,
        stamp_s: float,
        can_id: int,
        data: bytes,
        dlc: int | None = None,
        is_error: bool = False,
        is_extended: bool = False,
    ) -> str | None:
        return self.featurizer.push_can(stamp_s, can_id, data, dlc, is_error, is_extended)

    def reset(self, reason: str) -> None:
        self.featurizer.reset(reason)

    def prepare(self, now_s: float) -> bool:
        """See :meth:`WindowFeaturizer.prepare`: the next window's signal part, ahead of its end."""
        return self.featurizer.prepare(now_s)

    def poll(self, now_s: float, explain: bool = True) -> list[WindowResult]:
        """Score every window that ``now_s`` completes. ``explain=False`` leaves the contributions to a later
        :meth:`explain` call on the same results (the node publishes a score before explaining it)."""
        windows = self.featurizer.poll(now_s)
        if not windows:
            return []
        ok = [i for i, w in enumerate(windows) if w.status == OK]
        scores = np.full(len(windows), np.nan)
        error = ""
        if ok:
            try:
                scores[ok] = self.model.score_windows(np.stack([windows[i].features for i in ok]))
            except Exception as exc:  # a model failure must not take the node down; report it per window
                error = f"scoring failed: {type(exc).__name__}: {exc}"
                self.featurizer._count("model_errors", len(ok))
        results = []
        for i, w in enumerate(windows):
            status, message = w.status, w.status_message
            if status == OK and (error or not math.isfinite(scores[i])):
                status, message = MODEL_ERROR, error or "model returned a non-finite score"
            score = float(scores[i]) if status == OK else math.nan
            results.append(
                WindowResult(
                    start_s=w.start_s,
                    end_s=w.end_s,
                    score=score,
                    threshold=self.threshold,
                    is_anomaly=bool(status == OK and score > self.threshold),
                    status=status,
                    status_message=message,
                    feature_names=self.feature_names,
                    contributions=[],
                    data_quality_fault=w.data_quality_fault,
                    features=w.features if status == OK else None,
                )
            )
        if explain:
            self.explain(results)
        return results

    def explain(self, results: list[WindowResult]) -> list[WindowResult]:
        """Fill in the contributions of the results the ``contributions`` mode selects (all OK windows, or the
        anomalous ones) and return those. One batched attribution for all of them, as ``poll`` does by default, so
        the numbers are the same whichever way they were asked for. A failure leaves them without contributions,
        counted as ``explain_errors`` (their scores stay valid)."""
        chosen = [r for r in results if r.features is not None and (self.contributions == "all" or r.is_anomaly)]
        if not self.with_contributions or not chosen:
            return []
        try:
            z = self.model.normaliser.transform(np.stack([r.features for r in chosen]))
            c = self.model.detector.contributions(z)
        except Exception:  # attribution must not take the node down; the scores were valid without it
            self.featurizer._count("explain_errors", len(chosen))
            return []
        for row, r in zip(c, chosen):
            r.contributions = row.tolist()
        return chosen


# ------------------------------------------------------------------------------------------------------------
def _iter_events(events: Any, imu_sources: tuple[str, ...]) -> Iterable[ImuSample | CanFrame | StreamSample]:
    if isinstance(events, Recording):
        imu_sources, events = events.imu_sources, events.events
    if isinstance(events, np.ndarray):
        stamp, kind, src = events["stamp"], events["kind"], events["source"]
        accel, gyro, cid, data, dlc = events["accel"], events["gyro"], events["can_id"], events["data"], events["dlc"]
        err, ext = events["is_error"], events["is_extended"]
        for i in range(len(events)):
            if kind[i] == KIND_IMU:
                yield ImuSample(float(stamp[i]), accel[i], gyro[i], imu_sources[int(src[i])])
            elif kind[i] == KIND_CAN:
                n = int(dlc[i])
                yield CanFrame(
                    float(stamp[i]), int(cid[i]), data[i, : min(n, 8)].tobytes(), n, bool(err[i]), bool(ext[i])
                )
            else:  # a registry stream (GNSS ...): its sample in the values column
                yield StreamSample(float(stamp[i]), streams.by_kind(int(kind[i])).name, events["values"][i])
        return
    yield from events


RECORDING = "recording"  # the one input topic of an offline recording (merged in stamp order)


def _drive(target: Any, events: Any, imu_sources: tuple[str, ...], poll_end: bool) -> list[Any]:
    """Offline scoring is live scoring's in-order case: one input (the recording in stamp order), so a window is
    finalised at the first event at or after its end; no clock jumps, drops or silence, nothing prepared ahead."""
    out: list[Any] = []
    live = LiveScoring(
        target, (RECORDING,), lambda results, _published, _t: out.extend(results), prepare_ahead=False,
        explain_in_poll=True,
    )  # fmt: skip
    push = live.push
    for ev in _iter_events(events, imu_sources):
        stamp = ev.stamp_s
        if isinstance(ev, ImuSample):
            push(stamp, "imu", ev.source, (stamp, ev.accel, ev.gyro), RECORDING)
        elif isinstance(ev, StreamSample):
            push(stamp, ev.stream, ev.stream, (stamp, ev.values), RECORDING)
        else:
            push(stamp, "can", "can", (stamp, ev.can_id, ev.data, ev.dlc, ev.is_error, ev.is_extended), RECORDING)
    if poll_end:
        live.finish()
    return out


def score_recording(
    model_dir_or_scorer: Any, events: Any, imu_sources: tuple[str, ...] = ("imu",)
) -> list[WindowResult]:
    """Score a recording offline with the streaming code path (events sorted by stamp).

    ``events``: a :class:`Recording`, an ``EVENT_DTYPE`` array, or an iterable of ImuSample / CanFrame.
    """
    if isinstance(model_dir_or_scorer, StreamingScorer):
        scorer = model_dir_or_scorer
    elif isinstance(model_dir_or_scorer, TimeseriesModel):
        scorer = StreamingScorer(model_dir_or_scorer)
    else:
        scorer = StreamingScorer.from_model_dir(model_dir_or_scorer)
    return _drive(scorer, events, imu_sources, poll_end=True)


def featurize_recording(
    config: PipelineConfig, events: Any, stride_s: float | None = None, imu_sources: tuple[str, ...] = ("imu",)
) -> list[WindowFeatures]:
    """Window features of a recording through the same featurizer the scorer uses (training, evaluation)."""
    return _drive(WindowFeaturizer(config, stride_s=stride_s), events, imu_sources, poll_end=True)


def stack_features(windows: list[WindowFeatures]) -> tuple[np.ndarray, np.ndarray]:
    """(features of OK windows, their indices in ``windows``)."""
    idx = np.array([i for i, w in enumerate(windows) if w.status == OK], dtype=int)
    if len(idx) == 0:
        return np.empty((0, 0)), idx
    return np.stack([windows[i].features for i in idx]), idx
