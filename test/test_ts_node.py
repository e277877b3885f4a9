"""timeseries_anomaly_node across processes with real rclpy over real DDS (no mocks).

The node runs as its own process (``python -m flow_anomaly_ros.ros.timeseries_node --ros-args -p ...``), a second
process (``test/ts_replay_publisher.py``) replays the real KITTI IMU and CAN frames generated from a real opendbc DBC
(the time-series core's data modules), and this process listens to ``~/score`` and ``/diagnostics``. A tiny RealNVP
model is trained once per session with the core's API. What is checked:

- scores from the live node equal the offline ``score_recording`` scores of the same input, window by window;
- injected faults are flagged within a few windows, clean driving stays near the calibrated false-alarm rate;
- every bad-input case has its stated behaviour (NaN, duplicate and out-of-order stamps, unknown ids, DLC mismatch,
  error and remote frames, a silent IMU, a looping bag with use_sim_time, all inputs silent) and the node survives;
- a flood is absorbed by the bounded queue: drops are counted, memory stays flat, the node keeps scoring;
- a missing, corrupt or mismatched model gives MODEL_ERROR on /diagnostics and no scores, and a missing can_msgs type
  is named at start-up.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rosutil import REPO, ros_env, spin_until, start_python, stop_process

pytestmark = pytest.mark.ros

PUBLISHER = str(REPO / "test" / "ts_replay_publisher.py")
NODE_MODULE = "flow_anomaly_ros.ros.timeseries_node"
TRAIN_S, CALIB_S = 40.0, 30.0  # seconds of the KITTI drive used to fit and to calibrate the tiny model
REPLAY_S = 40.0  # clean driving after them, replayed to the node
STATUS = {"OK": 0, "WARMING_UP": 1, "STALE_INPUT": 2, "INVALID_INPUT": 3, "MODEL_ERROR": 4}


# --------------------------------------------------------------------------------------------------------------
# Session data: the KITTI drive, its CAN traffic and a tiny model trained with the core's API
# --------------------------------------------------------------------------------------------------------------
def _drive_slice(drive, t0: float, t1: float):
    m = (drive.t >= t0) & (drive.t < t1)
    g = (drive.gps_t >= t0 - 2) & (drive.gps_t < t1 + 2)
    return dataclasses.replace(
        drive, t=drive.t[m], accel=drive.accel[m], gyro=drive.gyro[m], speed=drive.speed[m], gps_t=drive.gps_t[g],
        gps_xyz=drive.gps_xyz[g],
    )  # fmt: skip


@pytest.fixture(scope="session")
def ts_world(tmp_path_factory):
    """Drive slices as core events, and a tiny RealNVP model directory trained and calibrated on clean driving."""
    from ts_replay_publisher import quantised, train_tiny_model

    from flow_anomaly_ros.data.can_traffic import generate_can_events, vehicle_signals
    from flow_anomaly_ros.data.injection import signal_sigmas
    from flow_anomaly_ros.data.kitti import load_kitti_drive
    from flow_anomaly_ros.timeseries.events import concat_events, imu_events
    from flow_anomaly_ros.timeseries.signals import default_config

    config, _ = default_config()
    drive = load_kitti_drive()
    start = float(drive.t[0])
    part = _drive_slice(drive, start, start + TRAIN_S + CALIB_S + REPLAY_S)
    events = quantised(
        concat_events([imu_events(part.t, part.accel, part.gyro), generate_can_events(part, config, seed=0)])
    )

    def window(a: float, b: float) -> np.ndarray:
        st = events["stamp"]
        return events[(st >= start + a) & (st < start + b)]

    model_dir = train_tiny_model(
        config, window(0, TRAIN_S), window(TRAIN_S, TRAIN_S + CALIB_S), tmp_path_factory.mktemp("ts_model") / "realnvp"
    )
    replay_from = start + TRAIN_S + CALIB_S
    train = part.t < start + TRAIN_S
    steer = vehicle_signals(part, seed=0)["STEER_ANGLE"]
    return SimpleNamespace(
        sigma=signal_sigmas(part.accel[train], part.gyro[train], part.speed[train], steer[train]),
        config=config,
        model_dir=model_dir,
        calibrated_rate=0.01,
        clean=window(TRAIN_S + CALIB_S, TRAIN_S + CALIB_S + REPLAY_S),
        t0=replay_from,
        tmp=tmp_path_factory.mktemp("ts_replays"),
    )


# --------------------------------------------------------------------------------------------------------------
# Processes and listening
# --------------------------------------------------------------------------------------------------------------
def _ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"'{v}'" if isinstance(v, str) else str(v) for v in value) + "]"
    return str(value) if value != "" else "''"


def start_node(name: str, env: dict | None = None, **params):
    """The node as its own process, named ``name``, inputs on ``/<name>/imu`` and ``/<name>/can``."""
    params = {"imu_topics": [f"/{name}/imu"], "can_topic": f"/{name}/can", "diagnostics_period_s": 0.25, **params}
    args = ["-m", NODE_MODULE, "--ros-args", "-r", f"__node:={name}"]
    for key, value in params.items():
        args += ["-p", f"{key}:={_ros_value(value)}"]
    return start_python(args, env=env)


PIN_CPU = max(os.sched_getaffinity(0))  # the CPU the bad-input node is pinned to (cpu_affinity)


def _thread_cpus(pid: int) -> dict[str, str]:
    """Thread name -> the CPUs it may run on (``Cpus_allowed_list`` in /proc), for every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line)
        out[f"{status['Name'].strip()}/{task.name}"] = status["Cpus_allowed_list"].strip()
    return out


def start_publisher(name: str, replay: Path, *extra: str):
    return start_python([PUBLISHER, str(replay), "--imu-topics", f"/{name}/imu", "--can-topic", f"/{name}/can", *extra])


class Listener:
    """Collects ``/<name>/score``, ``/<name>/explanation`` and the node's ``/diagnostics`` entries in this process."""

    def __init__(self, ros_node, name: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from flow_anomaly_ros.msg import AnomalyScore

        from flow_anomaly_ros.ros.qos import qos_from_name

        self.name = name
        self.scores: list = []
        self.explanations: list = []
        self.diagnostics: list = []
        ros_node.create_subscription(
            AnomalyScore, f"/{name}/score", self.scores.append, qos_from_name("reliable", 5000)
        )
        ros_node.create_subscription(
            AnomalyScore, f"/{name}/explanation", self.explanations.append, qos_from_name("reliable", 5000)
        )
        ros_node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)

    def _on_diag(self, msg) -> None:
        self.diagnostics += [s for s in msg.status if s.name == f"/{self.name}"]

    def last_diag(self):
        return self.diagnostics[-1] if self.diagnostics else None

    def values(self, status=None) -> dict[str, str]:
        status = status or self.last_diag()
        return {kv.key: kv.value for kv in status.values} if status is not None else {}


def level(status) -> int:
    from flow_anomaly_ros.ros.diagnostics import level_of

    return level_of(status)


def end_s(score) -> float:
    return score.header.stamp.sec + score.header.stamp.nanosec * 1e-9


def run_replay(ros_node, proc_node, listener: Listener, replay: Path, *pub_args: str, timeout: float = 120.0) -> str:
    """Wait until the node is active, replay, wait for the last windows; returns the publisher's output."""
    assert spin_until(ros_node, lambda: listener.values().get("model_id"), timeout=60.0), _fail(proc_node, listener)
    pub = start_publisher(listener.name, replay, *pub_args)
    try:
        spin_until(ros_node, lambda: pub.poll() is not None, timeout=timeout)
    finally:
        out = stop_process(pub)
    assert "SENT" in out, f"publisher failed:\n{out}"
    n = len(listener.scores)
    spin_until(ros_node, lambda: False, timeout=1.0)  # the last windows
    assert len(listener.scores) >= n
    return out


def _fail(proc, listener: Listener) -> str:
    last = listener.last_diag()
    alive = proc.poll() is None
    out = "" if alive else proc.stdout.read()
    return f"node alive={alive}, last diagnostics: {last.message if last else None}\n{out}"


@pytest.fixture
def node_procs():
    procs: list = []
    yield procs
    outputs = [stop_process(p) for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode in (0, -2), f"node exited with {p.returncode}:\n{out}"


# --------------------------------------------------------------------------------------------------------------
# Bad input, message by message
# --------------------------------------------------------------------------------------------------------------
def _bad_input_replay(world) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """22 s of clean driving with one bad-input case every ~2.5 s, then the first 6 s again (a looping bag)."""
    from flow_anomaly_ros.timeseries.events import KIND_CAN, KIND_IMU
    from flow_anomaly_ros.timeseries.signals import load_dbc

    t0 = world.t0
    ev = world.clean[world.clean["stamp"] < t0 + 22.0].copy()
    rel = ev["stamp"] - t0
    imu = ev["kind"] == KIND_IMU
    wheel = load_dbc(world.config.dbc).get_message_by_name("WHEEL_SPEEDS")
    send_t = ev["stamp"].copy()
    rtr = np.zeros(len(ev), bool)
    cases = {}

    nan_rows = imu & (rel >= 4.0) & (rel < 4.05)
    ev["accel"][nan_rows, 0] = np.nan
    cases["nan"] = (4.0, 4.05)

    dlc_rows = (ev["kind"] == KIND_CAN) & (ev["can_id"] == wheel.frame_id) & (rel >= 13.0) & (rel < 13.05)
    ev["dlc"][dlc_rows] = 4
    cases["dlc"] = (13.0, 13.05)

    i_ooo = int(np.flatnonzero(imu & (rel >= 9.0))[0])  # two IMU samples sent in swapped order
    j_ooo = int(np.flatnonzero(imu & (rel > rel[i_ooo]))[0])
    send_t[i_ooo], send_t[j_ooo] = send_t[j_ooo], send_t[i_ooo]
    cases["out_of_order"] = (rel[i_ooo], rel[j_ooo])

    keep = ~(imu & (rel >= 17.0) & (rel < 18.0))  # the IMU goes silent for 1 s, CAN goes on
    cases["imu_silent"] = (17.0, 18.0)

    from ts_replay_publisher import quantised

    from flow_anomaly_ros.timeseries.events import can_events, new_events

    dup = ev[np.flatnonzero(imu & (rel >= 7.0))[:1]].copy()  # the same IMU sample twice
    cases["duplicate"] = (float(dup["stamp"][0] - t0),) * 2
    n_unknown = 5
    unknown = can_events(
        t0 + 11.0 + 0.01 * np.arange(n_unknown) + 0.0031, np.full(n_unknown, 0x7E5), np.zeros((n_unknown, 8)), 8
    )
    cases["unknown_id"] = (11.0, 11.05)
    errors = can_events(t0 + 15.0 + 0.01 * np.arange(3) + 0.0017, np.zeros(3), np.zeros((3, 8)), 0, is_error=True)
    cases["error_frame"] = (15.0, 15.03)
    remote = can_events(np.array([t0 + 15.5017]), np.array([wheel.frame_id]), np.zeros((1, 8)), 0)
    extra = quantised(np.concatenate([dup, unknown, errors, remote]))
    extra_rtr = np.array([False] * (len(dup) + n_unknown + 3) + [True])

    loop = world.clean[world.clean["stamp"] < t0 + 6.0]  # a looping bag: the first 6 s again
    loop_send = loop["stamp"] + 22.5
    events = np.concatenate([ev[keep], extra, loop])
    send = np.concatenate([send_t[keep], extra["stamp"] + 1e-7, loop_send])
    rtr = np.concatenate([rtr[keep], extra_rtr, np.zeros(len(loop), bool)])
    order = np.argsort(send, kind="stable")
    assert new_events(0).dtype == events.dtype
    return events[order], send[order], rtr[order], cases


def _affected(scores, t0: float, case: tuple[float, float], window_s: float) -> list:
    lo, hi = t0 + case[0], t0 + case[1]
    return [s for s in scores if end_s(s) > lo and end_s(s) - window_s < hi]  # windows cover [end - window, end)


def test_bad_input_each_case_has_its_behaviour_and_the_node_survives(ts_world, ros_node, node_procs):
    from ts_replay_publisher import save_replay

    events, send_t, rtr, cases = _bad_input_replay(ts_world)
    replay = ts_world.tmp / "bad_input.npz"
    save_replay(replay, events, send_t, rtr)
    name = "ts_bad_input"
    listener = Listener(ros_node, name)
    node = start_node(name, model_dir=ts_world.model_dir, use_sim_time=True, input_qos="reliable",
                      input_qos_depth=2000, output_qos_depth=2000, thread_priority=1,
                      cpu_affinity=[PIN_CPU])  # fmt: skip
    node_procs.append(node)
    run_replay(ros_node, node, listener, replay, "--qos", "reliable", "--depth", "2000", "--speed", "2", "--clock",
               "--clock-tail", "2.5")  # fmt: skip
    spin_until(ros_node, lambda: False, timeout=2.0)
    assert node.poll() is None, "node died"

    scores = listener.scores
    loop_at = next((i for i, s in enumerate(scores) if "clock jumped back" in s.status_message), None)
    assert loop_at is not None, "the looping bag was not reported in any score's status_message"
    first_pass, second_pass = scores[:loop_at], scores[loop_at:]
    window_s = ts_world.config.window_s
    t0 = ts_world.t0

    # Nothing is ever presented as a valid, non-anomalous score where the input was bad.
    def statuses(case):
        return {
            (s.status, s.is_anomaly, s.status_message[:80]) for s in _affected(first_pass, t0, cases[case], window_s)
        }

    for case, expected_text in (("nan", "nan"), ("out_of_order", "out_of_order"), ("dlc", "dlc")):
        hit = _affected(first_pass, t0, cases[case], window_s)
        assert hit, f"no window covers the {case} case"
        assert all(s.status == STATUS["INVALID_INPUT"] for s in hit), (case, statuses(case))
        assert all(expected_text in s.status_message for s in hit), case
        assert not any(s.is_anomaly for s in hit) and all(np.isnan(s.score) for s in hit)
    for case in ("unknown_id", "error_frame"):  # accepted frames that the model must flag
        hit = [s for s in _affected(first_pass, t0, cases[case], window_s) if s.status == STATUS["OK"]]
        assert hit and all(s.is_anomaly for s in hit), (case, statuses(case))
    silent = _affected(first_pass, t0, (17.1, 17.9), window_s)  # clear of the edges of the 1 s gap
    assert silent and all(s.status == STATUS["STALE_INPUT"] for s in silent), statuses("imu_silent")
    assert all("imu.accel_x silent" in s.status_message for s in silent)
    ok_windows = [s for s in first_pass if s.status == STATUS["OK"]]
    assert len(ok_windows) >= 20, "clean stretches between the cases should score OK"

    # The looping bag: state reset, said so, warm-up again, then valid scores on the replayed stretch.
    assert second_pass[0].status != STATUS["OK"]
    assert any(s.status == STATUS["OK"] and end_s(s) <= t0 + 6.0 for s in second_pass)
    # use_sim_time: /clock ran on after the data stopped, so the silent inputs are reported, not left hanging.
    tail = [s for s in second_pass if end_s(s) > t0 + 6.0 + 0.5]
    assert tail and all(s.status == STATUS["STALE_INPUT"] for s in tail), [(end_s(s), s.status) for s in tail]

    values = listener.values()
    assert int(values["resets"]) >= 1 and "clock jumped back" in values["last_reset_reason"]
    assert int(values["core.imu[imu]_duplicate"]) >= 1
    assert int(values["core.imu[imu]_out_of_order"]) >= 1
    assert int(values["core.imu[imu]_invalid"]) >= 5
    assert int(values["core.can_dlc_mismatch"]) >= 1
    assert int(values["core.can_unknown_id"]) >= 5 and int(values["core.can_error_frames"]) >= 3
    counted = sum(int(values[k]) for k in ("core.imu[imu]_duplicate", "core.imu[imu]_out_of_order",
                                           "core.imu[imu]_invalid", "core.can_dlc_mismatch"))  # fmt: skip
    assert int(values["rejected"]) >= counted + 1  # + the remote (RTR) frame, refused by the node itself
    assert int(values["dropped"]) == 0
    # thread_priority: real-time scheduling where the machine allows it, else said so (and scoring goes on anyway)
    assert values["realtime"].startswith(("SCHED_FIFO 1 ", "refused")), values["realtime"]
    # cpu_affinity: every thread of the node's process (executor, input, DDS) runs on the one CPU asked for
    assert values["cpu_affinity"].startswith(f"CPU {PIN_CPU} ("), values["cpu_affinity"]
    allowed = _thread_cpus(node.pid)
    assert len(allowed) >= 4 and set(allowed.values()) == {str(PIN_CPU)}, allowed


# --------------------------------------------------------------------------------------------------------------
# Model problems and a missing message type
# --------------------------------------------------------------------------------------------------------------
def test_missing_corrupt_or_mismatched_model_gives_model_error_and_no_scores(ts_world, ros_node, node_procs, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(ts_world.model_dir, corrupt)
    weights = corrupt / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    missing = tmp_path / "not_yet"
    cases = {
        "ts_missing_model": {"model_dir": missing, "retry_period_s": 0.5},
        "ts_corrupt_model": {"model_dir": corrupt},
        "ts_mismatched_model": {"model_dir": ts_world.model_dir, "imu_sources": ["imu_front"]},
    }
    listeners = {name: Listener(ros_node, name) for name in cases}
    for name, params in cases.items():
        node_procs.append(start_node(name, **params))

    def model_errors() -> bool:
        return all(
            any(level(s) == 2 and s.message.startswith("MODEL_ERROR") for s in lst.diagnostics)
            for lst in listeners.values()
        )

    assert spin_until(ros_node, model_errors, timeout=90.0), {n: lst.last_diag() for n, lst in listeners.items()}
    messages = {n: next(s.message for s in lst.diagnostics if level(s) == 2) for n, lst in listeners.items()}
    assert "not_yet" in messages["ts_missing_model"]
    assert "weights.safetensors" in messages["ts_corrupt_model"]
    assert "imu_front" in messages["ts_mismatched_model"] or "IMU sources" in messages["ts_mismatched_model"]
    assert all(p.poll() is None for p in node_procs), "a node died on a model problem"
    assert not any(lst.scores for lst in listeners.values()), "no scores without a valid model"

    # The model appears: the node retries, configures and activates by itself.
    shutil.copytree(ts_world.model_dir, missing)
    recovered = listeners["ts_missing_model"]
    assert spin_until(ros_node, lambda: recovered.values().get("model_id", "").startswith("timeseries/"), 60.0)


def test_missing_can_msgs_type_is_named_at_start_up(ros_node, tmp_path):
    shadow = tmp_path / "shadow" / "can_msgs"  # a can_msgs package that cannot be imported, ahead on sys.path
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('can_msgs hidden by the test')\n")
    env = ros_env(PYTHONPATH=os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    name = "ts_no_can_msgs"
    listener = Listener(ros_node, name)
    node = start_node(name, env=env, model_dir="/nonexistent")
    try:
        assert spin_until(ros_node, lambda: any(level(s) == 2 for s in listener.diagnostics), timeout=60.0)
        assert "can_msgs/msg/Frame is not installed" in listener.last_diag().message
        assert node.poll() is None
    finally:
        out = stop_process(node)
    assert node.returncode == 0, out
    assert "can_msgs/msg/Frame is not installed" in out and "ros-<distro>-can-msgs" in out


def test_invalid_parameter_values_are_named_together_at_configure(ros_node, tmp_path):
    """Every bad value is named in one error, and the node stays unconfigured (no model is even looked at)."""
    from rclpy.parameter import Parameter

    from flow_anomaly_ros.ros.managed_node import ParameterError
    from flow_anomaly_ros.ros.timeseries_node import TimeseriesAnomalyNode

    bad = {
        "autostart": False,
        "model_dir": "",
        "imu_topics": ["/a/imu", "/b/imu"],
        "imu_sources": ["imu"],
        "input_qos": "fastest",
        "contributions": True,  # the former boolean: now anomalous / all / none
        "queue_size": 2,
        "input_batch_s": 0.5,
        "clock_jump_back_s": float("nan"),
        "dbc_file": str(tmp_path / "missing.dbc"),
        "cpu_affinity": [0, 4096],
    }
    node = TimeseriesAnomalyNode(
        "ts_bad_params",
        context=ros_node.context,
        parameter_overrides=[Parameter(k, value=v) for k, v in bad.items()],
    )
    try:
        with pytest.raises(ParameterError) as info:
            node.read_params()
        text = str(info.value)
        for expected in (
            "model_dir is empty",
            "imu_sources has 1 entries but imu_topics has 2",
            "input_qos='fastest' is not one of",
            "contributions=True has type bool, expected str",
            "queue_size=2 must be >= 8",
            "input_batch_s=0.5 must be <= 0.02",
            "clock_jump_back_s=nan must be finite",
            "missing.dbc' does not exist",
            "cpu_affinity=[0, 4096]: CPU(s) [4096] not available to this process",
        ):
            assert expected in text, (expected, text)
        assert node.lifecycle_state == "unconfigured"
    finally:
        node.destroy_node()


# --------------------------------------------------------------------------------------------------------------
# Flood
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("input_thread", [True, False], ids=["input_thread", "executor_callbacks"])
def test_flood_is_bounded_counted_and_survived(ts_world, ros_node, node_procs, input_thread):
    import psutil
    from ts_replay_publisher import save_replay

    from flow_anomaly_ros.timeseries.events import can_events

    t0 = ts_world.t0
    base = ts_world.clean[ts_world.clean["stamp"] < t0 + 9.0]
    n_flood = 4000  # a DoS flood with the highest-priority id, all sent back to back
    flood = can_events(t0 + 4.0 + np.arange(n_flood) * 0.5 / n_flood, np.zeros(n_flood), np.zeros((n_flood, 8)), 8)
    events = np.concatenate([base, flood])
    send = np.concatenate([base["stamp"], np.full(n_flood, t0 + 4.0)])
    order = np.argsort(send, kind="stable")
    replay = ts_world.tmp / "flood.npz"
    save_replay(replay, events[order], send[order])

    name = f"ts_flood_{int(input_thread)}"
    listener = Listener(ros_node, name)
    node = start_node(name, model_dir=ts_world.model_dir, queue_size=8, input_thread=input_thread)
    node_procs.append(node)
    assert spin_until(ros_node, lambda: listener.values().get("model_id"), timeout=60.0), _fail(node, listener)
    rss_before = psutil.Process(node.pid).memory_info().rss
    run_replay(ros_node, node, listener, replay, "--speed", "1")
    rss_after = psutil.Process(node.pid).memory_info().rss
    spin_until(ros_node, lambda: False, timeout=1.0)
    values = listener.values()
    assert node.poll() is None, "node died in the flood"
    assert values["input_path"].startswith("input thread" if input_thread else "executor callbacks"), values
    assert int(values["dropped"]) + int(values["lost_in_transport"]) > 0, values
    assert rss_after - rss_before < 50e6, f"memory grew by {(rss_after - rss_before) / 1e6:.0f} MB"
    flood_windows = _affected(listener.scores, t0, (4.0, 4.5), ts_world.config.window_s)
    assert flood_windows and not any(s.status == STATUS["OK"] and not s.is_anomaly for s in flood_windows)
    assert any(end_s(s) > t0 + 7.0 for s in listener.scores), "the node stopped scoring after the flood"


# --------------------------------------------------------------------------------------------------------------
# Live = offline, faults flagged, clean driving quiet
# --------------------------------------------------------------------------------------------------------------
CLEAN_S = 14.0  # the replay starts with this much clean driving, then one injected fault every ~8 s
FAULTS = ("bias_jump", "spoof_speed", "fuzzing")


def test_live_scores_equal_offline_faults_are_flagged_and_clean_driving_is_quiet(ts_world, ros_node, node_procs):
    from std_msgs.msg import Float32
    from ts_replay_publisher import quantised, save_replay

    from flow_anomaly_ros.data.injection import Injector
    from flow_anomaly_ros.timeseries.pipeline import StreamingScorer, score_recording

    t0 = ts_world.t0
    events = ts_world.clean
    injector = Injector(ts_world.config, ts_world.sigma, np.random.default_rng(3))
    labels = []
    for i, fault in enumerate(FAULTS):
        events, label = injector.inject(events, fault, "clear", t0 + CLEAN_S + 1.0 + 8.0 * i)
        labels.append(label)
    events = quantised(events)
    replay = ts_world.tmp / "faults.npz"
    save_replay(replay, events)

    name = "ts_faults"
    listener = Listener(ros_node, name)
    values_seen: list = []
    ros_node.create_subscription(Float32, f"/{name}/score_value", lambda m: values_seen.append(m.data), 2000)
    node = start_node(name, model_dir=ts_world.model_dir, input_qos="reliable", input_qos_depth=5000,
                      output_qos_depth=2000, publish_score_value=True)  # fmt: skip
    node_procs.append(node)
    run_replay(ros_node, node, listener, replay, "--qos", "reliable", "--depth", "5000", "--speed", "2")
    live = {round(end_s(s), 6): s for s in listener.scores}
    values = listener.values()
    assert int(values["dropped"]) == 0 and int(values["lost_in_transport"]) == 0
    assert values["realtime"] == "off" and values["cpu_affinity"] == "off"
    # Most windows were prepared ahead (signal features computed before the window closed), so the equality with
    # the offline scores below, which prepare nothing, covers that path too.
    assert int(values["windows_prepared_ahead"]) >= 0.5 * int(values["windows_published"]), values
    for key in ("processing_latency", "score_latency", "queue_wait", "scoring_time"):  # where latency goes
        assert 0 < float(values[f"{key}_p50_ms"]) <= float(values[f"{key}_p99_ms"]) < 5000, (key, values)

    # Live equals offline, window by window: same status, bit-identical float32 scores and contributions (scores on
    # ~/score, each anomalous window's contributions right after on ~/explanation), and the core saw the same input
    # (its counters of accepted, unknown, mismatched... frames agree).
    scorer = StreamingScorer.from_model_dir(ts_world.model_dir, contributions="anomalous")  # the node's default
    offline = score_recording(scorer, events)
    assert {k: int(values[f"core.{k}"]) for k in scorer.counters} == scorer.counters
    matched = [(r, live[round(r.end_s, 6)]) for r in offline if round(r.end_s, 6) in live]
    assert len(matched) >= 0.95 * len(offline), f"{len(matched)} of {len(offline)} offline windows published live"
    explained = {round(end_s(e), 6): e for e in listener.explanations}
    assert len(explained) == len(listener.explanations) == int(values["explanations_published"]) > 0
    for r, s in matched:
        assert s.status == r.status, (r.end_s, r.status_message, s.status_message)
        assert len(s.feature_contributions) == len(s.feature_names) == 0  # the score goes out before its why
        e = explained.get(round(r.end_s, 6))
        if r.status == STATUS["OK"]:
            assert s.score == np.float32(r.score) and s.is_anomaly == r.is_anomaly
            assert (e is not None) == s.is_anomaly  # contributions say why a window was flagged
            if e is not None:
                assert (e.score, e.status, e.is_anomaly, e.header) == (s.score, s.status, s.is_anomaly, s.header)
                assert list(e.feature_contributions) == [np.float32(c) for c in r.contributions]
                assert list(e.feature_names) == scorer.feature_names
        else:
            assert e is None

    # ~/score_value mirrors ~/score for plotting tools.
    n = min(len(values_seen), len(listener.scores))  # the node goes on publishing (stale) after the replay
    assert n >= len(listener.scores) - 2
    assert np.array_equal(np.array(values_seen[:n], np.float32), [s.score for s in listener.scores[:n]], equal_nan=True)

    # Clean driving stays near the calibrated false-alarm rate (1 % of clean calibration windows).
    window_s = ts_world.config.window_s
    clean = [s for s in listener.scores if t0 + window_s <= end_s(s) <= t0 + CLEAN_S and s.status == STATUS["OK"]]
    assert len(clean) >= 100
    false_alarms = sum(s.is_anomaly for s in clean) / len(clean)
    assert false_alarms <= 3 * ts_world.calibrated_rate, f"false-alarm rate {false_alarms:.3f} on clean driving"

    # Every injected fault is flagged within one window length of its start (before the first window that lies
    # entirely inside the fault; at the 0.1 s stride that is at most 20 scores).
    for label in labels:
        flagged = [
            end_s(s) for s in listener.scores
            if label.start_s < end_s(s) <= label.end_s + window_s and (s.is_anomaly or s.status != STATUS["OK"])
        ]  # fmt: skip
        assert flagged, f"{label.fault} never flagged"
        delay = flagged[0] - label.start_s
        assert delay <= window_s + 1e-6, f"{label.fault} flagged only after {delay:.1f} s"
