"""Live scoring without ROS (timeseries.live_scoring): watermark, drops and losses, late samples, clock jumps,
silence, and the offline driver as its in-order case. Real KITTI + CAN recording, a real (tiny) RealNVP model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flow_anomaly_ros.data.timeseries_dataset import base_recording
from flow_anomaly_ros.timeseries.detectors import make_detector
from flow_anomaly_ros.timeseries.events import ImuSample
from flow_anomaly_ros.timeseries.live_scoring import BACKLOG, DROP_NOTE, LiveScoring
from flow_anomaly_ros.timeseries.normalise import RobustNormaliser
from flow_anomaly_ros.timeseries.pipeline import (
    StreamingScorer,
    TimeseriesModel,
    WindowFeaturizer,
    _iter_events,
    featurize_recording,
    score_recording,
    stack_features,
)
from flow_anomaly_ros.timeseries.signals import default_config
from flow_anomaly_ros.timeseries.status import INVALID_INPUT, OK, STALE_INPUT, WARMING_UP

TINY_FLOW = {"epochs": 2, "num_layers": 2, "hidden_features": 16, "num_blocks_per_layer": 1, "batch_size": 128}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 30 s real KITTI + CAN recording and a tiny RealNVP model trained on its first 18 s."""
    config, _ = default_config()
    rec, path = _tiny_model(config, tmp_path_factory.mktemp("live"))
    return {"config": config, "test": rec.slice_time(18.0, 30.0), "path": path}


def _tiny_model(config, where):
    """The 30 s recording of ``config``'s streams and a tiny RealNVP model trained on its first 18 s."""
    import torch

    torch.set_num_threads(1)
    rec, _ = base_recording(config, seed=1, duration_s=30.0)
    x, _ = stack_features(featurize_recording(config, rec.slice_time(0.0, 18.0).events, stride_s=0.1))
    norm = RobustNormaliser.fit(x)
    det = make_detector("realnvp", **TINY_FLOW).fit(norm.transform(x))
    det.calibrate(norm.transform(x), quantile=0.9)
    TimeseriesModel(config, norm, det).save(where / "model")
    return rec, where / "model"


def _messages(recording):
    """The recording as the node's queue holds it: (topic, kind, event tuple), in stamp order."""
    out = []
    for ev in _iter_events(recording, ()):
        if isinstance(ev, ImuSample):
            out.append((ev.source, "imu", (ev.stamp_s, ev.accel, ev.gyro)))
        else:
            out.append(("can", "can", (ev.stamp_s, ev.can_id, ev.data, ev.dlc, ev.is_error, ev.is_extended)))
    return out


class Live:
    """A LiveScoring configured as the node configures it (explain after publishing), collecting what it emits."""

    def __init__(self, path, **kwargs):
        self.scorer = StreamingScorer.from_model_dir(path, contributions="anomalous")
        self.out, self.triggers, self.resets = [], [], []
        self.now = 0.0
        kwargs = {"clock_jump_back_s": 1.0, "max_input_wait_s": 0.5, "input_timeout_s": 1.0, **kwargs}
        self.live = LiveScoring(self.scorer, ["imu", "can"], self.emit, clock=lambda: self.now,
                                on_reset=self.resets.append, **kwargs)  # fmt: skip

    def emit(self, results, published, t_trigger):
        self.scorer.explain(results)
        self.out += published
        self.triggers.append(t_trigger)

    def feed(self, messages, t_recv=None):
        for topic, kind, event in messages:
            self.live.process([(event[0] if t_recv is None else t_recv, kind, topic, event)])


def _key(results):
    """Everything published of each window (NaN scores as None, so that equal lists compare equal)."""
    return [
        (r.end_s, r.status, r.status_message, None if math.isnan(r.score) else r.score, r.is_anomaly,
         tuple(r.contributions))
        for r in results
    ]  # fmt: skip


def _old_drive(target, events):
    """The offline driver before it became LiveScoring's in-order case (the oracle: scores must not change)."""
    out = []
    featurizer = target.featurizer if isinstance(target, StreamingScorer) else target
    last = None
    for ev in _iter_events(events, ("imu",)):
        nxt = featurizer.next_window_end
        if nxt is not None and ev.stamp_s >= nxt:
            out += target.poll(ev.stamp_s)
        if isinstance(ev, ImuSample):
            target.push_imu(ev.stamp_s, ev.accel, ev.gyro, ev.source)
        else:
            target.push_can(ev.stamp_s, ev.can_id, ev.data, ev.dlc, ev.is_error, ev.is_extended)
        last = ev.stamp_s
    if last is not None:
        out += target.poll(last)
    return out


def test_offline_driver_gives_exactly_the_scores_and_features_of_the_old_driver(world):
    rec = world["test"]
    for mode in ("all", "anomalous"):
        new = score_recording(StreamingScorer.from_model_dir(world["path"], contributions=mode), rec)
        old = _old_drive(StreamingScorer.from_model_dir(world["path"], contributions=mode), rec)
        assert len(new) > 50 and _key(new) == _key(old)
    new_f = featurize_recording(world["config"], rec.events, stride_s=0.05)
    old_f = _old_drive(WindowFeaturizer(world["config"], stride_s=0.05), rec.events)
    assert len(new_f) == len(old_f) > 100
    for a, b in zip(new_f, old_f):
        assert (a.end_s, a.status, a.status_message) == (b.end_s, b.status, b.status_message)
        assert (a.features is None and b.features is None) or np.array_equal(a.features, b.features)


def test_topics_out_of_step_give_the_offline_scores_bit_for_bit(world):
    """In order per topic but not in step (CAN arrives 80 ms behind the IMU, as under load): the watermark waits,
    the next window is prepared ahead, and every window equals offline scoring (which prepares nothing)."""
    offline = score_recording(StreamingScorer.from_model_dir(world["path"], contributions="anomalous"), world["test"])
    messages = _messages(world["test"])
    arrival = np.array([ev[0] + (0.08 if kind == "can" else 0.0) for _, kind, ev in messages])
    live = Live(world["path"])
    for i in np.argsort(arrival, kind="stable"):
        topic, kind, event = messages[i]
        live.live.process([(float(arrival[i]), kind, topic, event)])
    assert _key(live.out) == _key(offline[: len(live.out)]) and len(live.out) >= len(offline) - 1
    assert live.scorer.featurizer.prepared_windows >= 0.5 * len(live.out)
    assert any(r.contributions for r in live.out) and live.live.resets == 0


def test_a_dropped_message_marks_its_windows_invalid_and_only_those(world):
    offline = score_recording(StreamingScorer.from_model_dir(world["path"], contributions="anomalous"), world["test"])
    messages = _messages(world["test"])
    live = Live(world["path"])
    t_drop = 24.03
    live.feed([m for m in messages if m[2][0] < t_drop])
    live.live.drops.note(t_drop)  # the queue was full: the node notes the stamp of the message it dropped
    live.feed([m for m in messages if m[2][0] >= t_drop])
    window_s, stride_s = world["config"].window_s, world["config"].stride_s
    by_end = {r.end_s: r for r in offline}
    marked = [r for r in live.out if r.end_s - window_s <= t_drop < r.end_s]
    assert len(marked) == round(window_s / stride_s)
    assert all(r.status == INVALID_INPUT and DROP_NOTE in r.status_message and not r.is_anomaly for r in marked)
    unmarked = [r for r in live.out if not r.end_s - window_s <= t_drop < r.end_s]
    assert _key(unmarked) == _key([by_end[r.end_s] for r in unmarked])
    assert sum(r.status == INVALID_INPUT for r in live.out) == len(marked)


def test_a_gap_in_publisher_sequence_numbers_marks_the_stretch_lost(world):
    live = Live(world["path"])
    gaps = live.live.gaps
    assert gaps.check("can", 20.0, 7, b"pub") == 0 and gaps.check("can", 20.01, 8, b"pub") == 0
    assert gaps.check("can", 20.05, 12, b"pub") == 3  # 9, 10, 11 lost between 20.01 and 20.05
    assert gaps.check("can", 20.06, None, None) == 0  # no sequence info: nothing said
    assert (live.live.drops.lo, live.live.drops.hi) == (20.01, 20.05)


def test_a_late_sample_marks_the_windows_that_missed_it(world):
    live = Live(world["path"])
    messages = _messages(world["test"])
    first = [m for m in messages if m[2][0] < 22.0]
    live.feed(first)
    finalised = live.scorer.featurizer._finalised_end
    before = len(live.out)
    live.live.process([(22.0, "imu", "imu", (finalised - 0.05, (0.0, 0.0, 9.8), (0.0, 0.0, 0.0)))])
    live.feed([m for m in messages if 22.0 <= m[2][0] < 24.0])
    after = live.out[before:]
    assert after and after[0].status == INVALID_INPUT and "late x1" in after[0].status_message
    assert live.scorer.counters["imu[imu]_late"] == 1 and live.live.resets == 0


def test_a_clock_jump_back_resets_names_it_and_scores_again(world):
    live = Live(world["path"])
    messages = _messages(world["test"])
    live.feed([m for m in messages if m[2][0] < 25.0])
    n_first = len(live.out)
    assert n_first > 20
    live.feed([m for m in messages if m[2][0] < 23.0], t_recv=30.0)  # the bag loops: 6 s back
    assert live.live.resets == 1 and live.resets and "clock jumped back" in live.resets[0]
    again = live.out[n_first:]
    assert again[0].status == WARMING_UP and "clock jumped back" in again[0].status_message
    first_ok = next(i for i, r in enumerate(again) if r.status == OK)
    assert all("clock jumped back" in r.status_message for r in again[: first_ok + 1])
    assert all("clock jumped back" not in r.status_message for r in again[first_ok + 1 :])
    assert live.scorer.counters.get("imu[imu]_late", 0) == 0  # reset, not rejected as late


def test_silent_inputs_advance_message_time_to_stale(world):
    live = Live(world["path"])
    messages = _messages(world["test"])
    live.now = 100.0
    live.feed([m for m in messages if m[2][0] < 22.0])
    n = len(live.out)
    live.now = 100.5
    live.live.advance_when_silent()
    assert len(live.out) == n  # silent for less than input_timeout_s: nothing yet
    live.now = 103.0
    live.live.advance_when_silent()
    stale = live.out[n:]
    assert stale and live.triggers[-1] is None  # not counted as score latency
    assert stale[-1].end_s <= 22.0 + 3.0 - 0.5 + 1e-9  # newest stamp + silence - max_input_wait_s
    assert stale[-1].status == STALE_INPUT and "silent" in stale[-1].status_message


def _backlogged_can(world, markers: bool):
    """From 22 s CAN is taken 1.5 s behind the IMU, catching up by 25 s, although the middleware received every
    message on time (t_recv = stamp): the input thread's per-round drain limit under a CPU hog. With ``markers``
    the queue says CAN is backlogged meanwhile."""
    messages = _messages(world["test"])

    def lag(kind: str, t: float) -> float:
        return 0.0 if kind != "can" or not 22.0 <= t < 25.0 else min(1.5, 25.0 - t)  # CAN still in order

    delay = [lag(kind, ev[0]) for _, kind, ev in messages]
    order = np.argsort([ev[0] + d for (_, _, ev), d in zip(messages, delay)], kind="stable")
    live = Live(world["path"])
    backlogged = False
    for i in order:
        topic, kind, event = messages[i]
        behind = delay[i] > 0 or (kind != "can" and 22.0 <= event[0] < 25.0)
        if markers and behind != backlogged:
            backlogged = behind
            live.live.process([(0.0, BACKLOG, "can", backlogged)])
        live.live.process([(event[0], kind, topic, event)])
    return live


def test_a_backlogged_topic_is_waited_for_not_taken_for_silent(world):
    offline = score_recording(StreamingScorer.from_model_dir(world["path"], contributions="anomalous"), world["test"])
    live = _backlogged_can(world, markers=True)
    assert len(live.out) >= len(offline) - 1 and _key(live.out) == _key(offline[: len(live.out)])


def test_windows_scored_without_a_lagging_topic_are_stale_never_ok_with_other_scores(world):
    offline = score_recording(StreamingScorer.from_model_dir(world["path"], contributions="anomalous"), world["test"])
    by_end = {r.end_s: r for r in offline}
    live = _backlogged_can(world, markers=False)  # nothing says CAN is backlogged: it looks silent and is skipped
    skipped = [r for r in live.out if "scored without waiting for can" in r.status_message]
    assert skipped and all(r.status != OK and not r.is_anomaly for r in skipped)  # STALE (WARMING_UP stays)
    assert any(r.status == STALE_INPUT for r in skipped)
    for r in live.out:
        if r.status == OK:  # every window published OK is exactly the offline one
            assert _key([r]) == _key([by_end[r.end_s]])


def test_a_stalled_sender_is_not_mistaken_for_a_silent_topic(world):
    """The whole sender stops for 2 s (a CPU-starved player): on resume every topic's last receipt is old, but no
    topic is behind in message time, so the watermark keeps waiting for all of them and nothing changes."""
    offline = score_recording(StreamingScorer.from_model_dir(world["path"], contributions="anomalous"), world["test"])
    messages = _messages(world["test"])
    live = Live(world["path"])
    live.feed([m for m in messages if m[2][0] < 22.0])
    rest = [m for m in messages if m[2][0] >= 22.0]
    topic, kind, event = rest[0]
    live.live.process([(event[0] + 2.0, kind, topic, event)])
    assert live.live._skipped == {}  # the other topic was silent 2 s by receipt time, but not behind
    for topic, kind, event in rest[1:]:
        live.live.process([(event[0] + 2.0, kind, topic, event)])
    assert len(live.out) >= len(offline) - 1 and _key(live.out) == _key(offline[: len(live.out)])


@pytest.fixture(scope="module")
def gnss_world(tmp_path_factory):
    """The demo's IMU + CAN + 1 Hz GNSS config, a 30 s real KITTI recording with its real fixes, a tiny model."""
    from flow_anomaly_ros.timeseries.signals import DEFAULT_CONFIG_PATH, load_pipeline_config

    config, _ = load_pipeline_config(DEFAULT_CONFIG_PATH.with_name("timeseries_model_gnss.yaml"))
    rec, path = _tiny_model(config, tmp_path_factory.mktemp("live_gnss"))
    return {"test": rec.slice_time(18.0, 29.5), "path": path}  # ends 0.5 s after a fix


def _gnss_messages(recording):
    """As :func:`_messages`, the GNSS fixes as the node's registry-stream events (topic and kind "gnss")."""
    out = []
    for ev in _iter_events(recording, ()):
        if isinstance(ev, ImuSample):
            out.append((ev.source, "imu", (ev.stamp_s, ev.accel, ev.gyro)))
        elif hasattr(ev, "stream"):
            out.append((ev.stream, ev.stream, (ev.stamp_s, ev.values)))
        else:
            out.append(("can", "can", (ev.stamp_s, ev.can_id, ev.data, ev.dlc, ev.is_error, ev.is_extended)))
    return out


def test_a_1hz_input_is_waited_for_between_fixes_and_the_end_of_the_stream_is_flushed(gnss_world):
    """A 1 Hz GNSS is silent for up to 1 s between fixes, longer than max_input_wait_s (0.5 s): its own period is
    part of its allowance, so no window is scored without it (all OK, equal to offline). After the last message no
    further one closes the windows past the last fix: once every input is silent past its allowance, the quiet
    flush scores them as offline's end of stream does, so live has every offline window, bit for bit."""
    offline = score_recording(StreamingScorer.from_model_dir(gnss_world["path"], contributions="anomalous"),
                              gnss_world["test"])  # fmt: skip
    messages = _gnss_messages(gnss_world["test"])
    assert sum(kind == "gnss" for _, kind, _ in messages) >= 10
    live = Live(gnss_world["path"])
    live.live.inputs = ["imu", "can", "gnss"]
    live.feed(messages)  # received on time (t_recv = stamp)
    last = max(ev[0] for _, _, ev in messages)
    last_fix = max(ev[0] for _, kind, ev in messages if kind == "gnss")
    assert all("scored without waiting" not in r.status_message for r in live.out)
    assert live.out and live.out[-1].end_s <= last_fix + 1e-9 < offline[-1].end_s  # waiting for the next fix
    n = len(live.out)
    live.live.flush_when_quiet(now=last + 0.4)  # IMU and CAN silent past 0.5 s + period, GNSS not yet
    assert len(live.out) == n
    live.live.process([(0.0, BACKLOG, "can", True)])
    live.live.flush_when_quiet(now=last + 5.0)  # messages of a topic still wait in the middleware: not the end
    assert len(live.out) == n
    live.live.process([(0.0, BACKLOG, "can", False)])
    live.live.flush_when_quiet(now=last + 5.0)
    assert len(live.out) == len(offline) and _key(live.out) == _key(offline)
    assert sum(r.status == OK for r in live.out) > 0.5 * len(offline)  # the rest: warming up (2 s windows, 2 fixes)
    assert live.live._period["gnss"] == pytest.approx(1.0, abs=0.1)
