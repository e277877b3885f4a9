"""Benchmark of timeseries_anomaly_node under sustained vehicle-bus load: ~1,000 msg/s and a saturated bus.

A publisher process (``test/ts_replay_publisher.py``) sends the real KITTI IMU at 100 Hz and CAN frames generated
from the opendbc Toyota Prius DBC (the 7 messages the model tracks, about 380 frames/s, plus 5 further DBC messages at
100 Hz that a real bus also carries: about 880 frames/s in all) at real-time pace with header stamps set at publish
time, to the node running as its own process with its default QoS (sensor-data inputs, reliable outputs). A tiny
RealNVP model is trained first with the core's API (the background ids are declared as expected, as a model for
that bus would be). Measured over the run:

- node latency, from its own diagnostics: per message, receipt -> processed (pushed, windows scored, scores
  published), and per score, receipt of the message that closed the window -> score published (p50, p99);
- end to end: window end (message time = publish time here) -> score received by this process;
- CPU of the node process (psutil, % of one core), messages sent / received / dropped / lost in transport;
- baseline in the same run: the core alone (offline ``score_recording`` of the same events, CPU per message and
  wall time of a poll that scores a window), so the ratios show what the ROS shell costs on top of the core;
- where the score latency goes, from the node's diagnostics: queue wait (receipt -> taken by the scoring thread)
  and the node's own scoring time per window when it closes, with how many windows were prepared ahead;
- one run with ``cpu_affinity:=[N]`` (the node's threads pinned to the last CPU, the publisher, standing in for the
  drivers, to the others: how a vehicle computer would run it), one with ``thread_priority:=50`` (SCHED_FIFO) and
  one with both. The machine's load average is recorded: other jobs on the CPUs show up directly in the tail.

A second load saturates the bus: every DBC message the model does not track as background, ~4,000 CAN frames/s in
all (a full 500 kbit/s bus), with the IMU at 200 Hz (KITTI's 100 Hz interpolated), its own tiny model trained on
that traffic, node with default parameters (the shipped configuration).

Usage: python bench/bench_timeseries_node.py --out bench/results/timeseries_node.md [--quick] [--loads 1000 saturated]
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "test"))

from common import markdown_table, parser, write_result  # noqa: E402

BACKGROUND = ("BRAKE", "GEAR_PACKET", "PCM_CRUISE", "BRAKE_MODULE2", "STEER_TORQUE_SENSOR")  # untracked, 100 Hz each
BACKGROUND_PERIOD_S = 0.01
SATURATED_CAN_HZ, SATURATED_IMU_HZ = 4000.0, 200.0  # a full 500 kbit/s bus, and an IMU at twice KITTI's rate
TRAIN_S, CALIB_S = 40.0, 20.0


def build_data(duration_s: float, workdir: Path, saturated: bool = False):
    """(pipeline config with the background ids expected, model dir, events of the benchmark replay).

    ``saturated``: the IMU at 200 Hz (the KITTI IMU interpolated) and every DBC message the model does not track
    as background, at the period that brings the bus to ~SATURATED_CAN_HZ frames/s (a 500 kbit/s bus is full at
    about 4,000 8-byte frames/s: 47 + 64 bits each before stuff bits, ~125 with them)."""
    from ts_replay_publisher import quantised, train_tiny_model

    from flow_anomaly_ros.data.can_traffic import generate_can_events, message_times
    from flow_anomaly_ros.data.kitti import load_kitti_drive
    from flow_anomaly_ros.timeseries.events import can_events, concat_events, imu_events
    from flow_anomaly_ros.timeseries.signals import default_config, load_dbc

    config, _ = default_config()
    db = load_dbc(config.dbc)
    names = [m.name for m in db.messages if m.name not in config.can_messages] if saturated else list(BACKGROUND)
    background = [db.get_message_by_name(n) for n in names]
    config = dataclasses.replace(config, extra_expected_can_ids=tuple(int(m.frame_id) for m in background))
    drive = load_kitti_drive()
    t0, t1 = float(drive.t[0]), float(drive.t[0]) + TRAIN_S + CALIB_S + duration_s
    m, g = (drive.t >= t0) & (drive.t < t1), (drive.gps_t >= t0 - 2) & (drive.gps_t < t1 + 2)
    part = dataclasses.replace(drive, t=drive.t[m], accel=drive.accel[m], gyro=drive.gyro[m], speed=drive.speed[m],
                               gps_t=drive.gps_t[g], gps_xyz=drive.gps_xyz[g])  # fmt: skip
    rng = np.random.default_rng(0)
    tracked = generate_can_events(part, config, seed=0)
    if saturated:
        t_imu = np.arange(part.t[0], part.t[-1], 1.0 / SATURATED_IMU_HZ)
        accel, gyro = (
            np.stack([np.interp(t_imu, part.t, x[:, i]) for i in range(3)], 1) for x in (part.accel, part.gyro)
        )
        imu = imu_events(t_imu, accel, gyro)
        period = len(background) / (SATURATED_CAN_HZ - len(tracked) / (t1 - t0))
    else:
        imu, period = imu_events(part.t, part.accel, part.gyro), BACKGROUND_PERIOD_S
    parts = [imu, tracked]
    for msg in background:
        t = message_times(period, t1 - t0, rng, start=t0)
        data = rng.integers(0, 256, size=(len(t), 8), dtype=np.uint8)
        parts.append(can_events(t, np.full(len(t), msg.frame_id), data, np.full(len(t), msg.length)))
    events = quantised(concat_events(parts))
    st = events["stamp"]
    model_dir = train_tiny_model(
        config,
        events[st < t0 + TRAIN_S],
        events[(st >= t0 + TRAIN_S) & (st < t0 + TRAIN_S + CALIB_S)],
        workdir / ("model_saturated" if saturated else "model"),
    )
    return config, model_dir, events[st >= t0 + TRAIN_S + CALIB_S]


def shipped_params() -> dict[str, str]:
    """The parameters ``config/timeseries_anomaly.yaml`` (the shipped configuration) sets to other values than the
    node's defaults, as ``-p`` values (model, topics and the diagnostics period are the benchmark's own)."""
    import yaml

    from flow_anomaly_ros.ros.managed_node import COMMON_PARAMS
    from flow_anomaly_ros.ros.timeseries_params import PARAMS

    doc = yaml.safe_load((REPO / "config" / "timeseries_anomaly.yaml").read_text())
    values = next(iter(doc.values()))["ros__parameters"]
    defaults = {p.name: p.default for p in (*COMMON_PARAMS, *PARAMS)}
    own = {"model_dir", "imu_topics", "imu_sources", "can_topic", "diagnostics_period_s"}
    fmt = {bool: lambda v: str(v).lower(), list: lambda v: "[" + ",".join(map(str, v)) + "]"}
    return {
        k: fmt.get(type(v), str)(v)
        for k, v in values.items()
        if k not in own and (k not in defaults or defaults[k] != v)
    }


def _timed_scorer(model_dir: Path, contributions: str) -> tuple[Any, list[float]]:
    """A warmed-up StreamingScorer whose polls that score windows record their wall time (ms) in the list."""
    from flow_anomaly_ros.timeseries.pipeline import StreamingScorer

    scorer = StreamingScorer.from_model_dir(model_dir, contributions=contributions)
    scorer.warm_up()  # as the node does at configure
    poll, poll_ms = scorer.poll, []

    def timed_poll(now_s: float) -> list:
        t0 = time.perf_counter()
        out = poll(now_s)
        if out:
            poll_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    scorer.poll = timed_poll
    return scorer, poll_ms


def core_cost(model_dir: Path, events: np.ndarray, contributions: str) -> tuple[float, float, float]:
    """The core alone, offline (score_recording, one thread): CPU seconds per message, and p50/p99 (ms) of the
    wall time of a poll that scores windows (what the node spends on the message that completes a window)."""
    from flow_anomaly_ros.timeseries.pipeline import score_recording

    scorer, poll_ms = _timed_scorer(model_dir, contributions)
    t = time.process_time()
    score_recording(scorer, events)
    cpu = (time.process_time() - t) / len(events)
    return cpu, float(np.percentile(poll_ms, 50)), float(np.percentile(poll_ms, 99))


def core_paced(model_dir: Path, events: np.ndarray, contributions: str) -> tuple[float, float]:
    """The same as ``core_cost`` but fed in real time (sleeping until each message's stamp, as the node waits for
    input): p50/p99 (ms) of a poll that scores windows. Against back-to-back polls this shows what running each
    window's code cold, after ~100 ms of sleep and other work, costs on this machine, with no ROS involved."""
    from flow_anomaly_ros.timeseries.pipeline import _iter_events, score_recording

    scorer, poll_ms = _timed_scorer(model_dir, contributions)
    t0, s0 = time.perf_counter(), float(events["stamp"][0])

    def paced():
        for ev in _iter_events(events, ("imu",)):
            delay = t0 + (ev.stamp_s - s0) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            yield ev

    score_recording(scorer, paced())
    return float(np.percentile(poll_ms, 50)), float(np.percentile(poll_ms, 99))


def run_node(model_dir: Path, replay: Path, node_params: dict[str, str], domain_env: dict, pub_cpus=None) -> dict:
    """Node + publisher processes (the publisher on ``pub_cpus`` if given); returns the measurements of one run."""
    import psutil
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from flow_anomaly_ros.msg import AnomalyScore
    from rosutil import start_python, stop_process

    from flow_anomaly_ros.ros.qos import qos_from_name

    name = "bench_ts_node"
    node = start_python(
        ["-m", "flow_anomaly_ros.ros.timeseries_node", "--ros-args", "-r", f"__node:={name}",
         "-p", f"model_dir:={model_dir}", "-p", "imu_topics:=['/bench/imu']", "-p", "can_topic:=/bench/can",
         "-p", "diagnostics_period_s:=0.5", *[a for k, v in node_params.items() for a in ("-p", f"{k}:={v}")]],
        env=domain_env,
    )  # fmt: skip
    context = rclpy.Context()
    rclpy.init(context=context)
    listener = rclpy.create_node("bench_ts_listener", context=context)
    arrivals: list[float] = []  # window end -> received, valid (OK) scores
    diags: list = []
    clock = listener.get_clock()

    def on_score(msg) -> None:
        now = clock.now().nanoseconds * 1e-9
        if msg.status == AnomalyScore.OK:  # not the stale windows published on the node clock after the replay
            arrivals.append(now - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    listener.create_subscription(AnomalyScore, f"/{name}/score", on_score, qos_from_name("reliable", 1000))
    listener.create_subscription(
        DiagnosticArray, "/diagnostics", lambda m: diags.extend(s for s in m.status if s.name == f"/{name}"), 10
    )
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)

    def spin_for(seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            executor.spin_once(timeout_sec=0.05)

    def values() -> dict[str, str]:
        return {kv.key: kv.value for kv in diags[-1].values} if diags else {}

    try:
        spin_for(120.0, until=lambda: "model_id" in values())
        if "model_id" not in values():
            raise RuntimeError(f"node did not become active: {diags[-1].message if diags else 'no diagnostics'}")
        proc = psutil.Process(node.pid)
        pub = start_python(
            [str(REPO / "test" / "ts_replay_publisher.py"), str(replay), "--imu-topics", "/bench/imu",
             "--can-topic", "/bench/can", "--speed", "1", "--stamp-now", "--linger", "0.5"],
            env=domain_env,
            preexec_fn=(lambda: os.sched_setaffinity(0, pub_cpus)) if pub_cpus else None,
        )  # fmt: skip
        spin_for(5.0, until=lambda: "received.imu" in values())  # publisher matched and sending
        cpu0, wall0 = proc.cpu_times(), time.monotonic()
        spin_for(3600.0, until=lambda: pub.poll() is not None)
        cpu1, wall1 = proc.cpu_times(), time.monotonic()
        pub_out = stop_process(pub)
        spin_for(1.5)  # final diagnostics
        v = values()
    finally:
        out = stop_process(node)
        executor.shutdown()
        listener.destroy_node()
        rclpy.try_shutdown(context=context)
    if not v:
        raise RuntimeError(f"no diagnostics from the node:\n{out}")
    if "SENT" not in pub_out:
        raise RuntimeError(f"publisher failed:\n{pub_out}")
    fields = dict(p.split("=", 1) for p in pub_out.split("SENT", 1)[1].split())
    sent = int(fields["imu"]) + int(fields["can"])
    received = int(v.get("received.imu", 0)) + int(v.get("received.can", 0))
    e2e = np.array(arrivals) * 1e3
    return {
        "sent": sent,
        "received": received,
        "dropped": int(v["dropped"]),
        "lost": int(v["lost_in_transport"]),
        "windows": int(v["windows_published"]),
        "proc_p50": float(v["processing_latency_p50_ms"]),
        "proc_p99": float(v["processing_latency_p99_ms"]),
        "score_p50": float(v["score_latency_p50_ms"]),
        "score_p99": float(v["score_latency_p99_ms"]),
        "wait_p50": float(v.get("queue_wait_p50_ms", "nan")),
        "wait_p99": float(v.get("queue_wait_p99_ms", "nan")),
        "scoring_p50": float(v.get("scoring_time_p50_ms", "nan")),
        "scoring_p99": float(v.get("scoring_time_p99_ms", "nan")),
        "realtime": v.get("realtime", "off"),
        "cpu_affinity": v.get("cpu_affinity", "off"),
        "prepared": int(v.get("windows_prepared_ahead", 0)),
        "e2e_p50": float(np.percentile(e2e, 50)) if len(e2e) else float("nan"),
        "e2e_p99": float(np.percentile(e2e, 99)) if len(e2e) else float("nan"),
        "cpu_pct": 100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (wall1 - wall0),
        "rate": received / (wall1 - wall0),
        "cpu_s_per_msg": ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(received, 1),
    }


LOADS = {
    "1000": "~1,000 msg/s (IMU 100 Hz, ~880 CAN frames/s)",
    "saturated": f"saturated 500 kbit/s bus ({SATURATED_CAN_HZ:,.0f} CAN frames/s) + IMU {SATURATED_IMU_HZ:.0f} Hz",
}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--loads", nargs="+", choices=tuple(LOADS), default=list(LOADS), help="bus loads to run")
    args = p.parse_args()
    from ts_replay_publisher import save_replay

    duration = 10.0 if args.quick else 30.0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update(env)
    cpus = sorted(os.sched_getaffinity(0))
    pin, others = cpus[-1], set(cpus[:-1])  # node on the last CPU, the publisher (the drivers) on the others
    pinned = {"cpu_affinity": f"[{pin}]"}
    shipped = shipped_params()
    shipped_label = "shipped (" + " ".join(f"{k}:={v}" for k, v in shipped.items()) + ")"
    base_configs = [("defaults", {})] + ([(f"cpu_affinity:=[{pin}]", pinned)] if others else [])
    saturated = [*base_configs, (shipped_label, shipped)]
    if others:
        saturated.append((f"{shipped_label} cpu_affinity:=[{pin}]", {**shipped, **pinned}))
    configs = {"1000": list(base_configs), "saturated": saturated}  # (label, node parameters) per load
    if not args.quick:
        configs["1000"] += [
            ("contributions:=all", {"contributions": "all"}),
            ("contributions:=none", {"contributions": "none"}),
            ("input_thread:=false", {"input_thread": "false"}),  # the rclpy executor takes the input (baseline)
            ("thread_priority:=50", {"thread_priority": "50"}),
        ]
        if others:
            configs["1000"] += [(f"cpu_affinity:=[{pin}] thread_priority:=50", {**pinned, "thread_priority": "50"})]
    rows, cpu_rows, paced, loads_text = [], [], {}, []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_ts_node_") as tmp:
        workdir = Path(tmp)
        for load in args.loads:
            print(f"building data and a tiny model ({LOADS[load]}, {duration:.0f} s of bus traffic)...", flush=True)
            _, model_dir, events = build_data(duration, workdir, saturated=load == "saturated")
            replay = workdir / f"replay_{load}.npz"
            save_replay(replay, events)
            n_imu = int((events["kind"] == 0).sum())
            loads_text.append(
                f"{LOADS[load]}: {len(events)} messages over {duration:.0f} s ({n_imu} IMU, "
                f"{len(events) - n_imu} CAN frames)"
            )
            for label, node_params in configs[load]:
                core, core_p50, core_p99 = core_cost(model_dir, events, node_params.get("contributions", "anomalous"))
                print(f"node run, {load}, {label} ...", flush=True)
                r = run_node(model_dir, replay, node_params, env, others if "cpu_affinity" in node_params else None)
                if "thread_priority" in node_params and not r["realtime"].startswith("SCHED_FIFO"):
                    label += f" ({r['realtime']})"
                if "cpu_affinity" in node_params and not r["cpu_affinity"].startswith("CPU"):
                    label += f" ({r['cpu_affinity']})"
                rows.append(
                    [LOADS[load].split(" (")[0], label, f"{r['rate']:.0f}", f"{r['sent']}/{r['received']}",
                     r["dropped"], r["lost"], f"{r['windows']} ({r['prepared']})",
                     r["proc_p50"], r["proc_p99"], r["score_p50"], r["score_p99"], r["wait_p50"], r["wait_p99"],
                     r["scoring_p50"], r["scoring_p99"], core_p50, core_p99, r["e2e_p50"], r["e2e_p99"]]
                )  # fmt: skip
                cpu_rows.append([rows[-1][0], label, r["rate"], r["cpu_pct"], r["cpu_s_per_msg"] * 1e6, core * 1e6,
                                 r["cpu_s_per_msg"] / core])  # fmt: skip
            if load == "1000":
                print("core alone, paced in real time ...", flush=True)
                paced[load] = core_paced(model_dir, events, "anomalous")
    load_after = os.getloadavg()
    headers = ["load", "node parameters", "msg/s", "sent/received", "dropped", "lost in DDS",
               "windows (prepared ahead)", "proc p50 ms", "proc p99 ms", "score p50 ms", "score p99 ms",
               "queue wait p50 ms", "queue wait p99 ms", "node scoring p50 ms", "node scoring p99 ms",
               "core-only scoring p50 ms", "core-only scoring p99 ms", "e2e p50 ms", "e2e p99 ms"]  # fmt: skip
    base = cpu_rows[0]  # the first load's defaults: the ratios below are against it, measured in this run
    for row in cpu_rows:
        row += [row[4] / base[4], row[3] / base[3]]
    cpu_headers = ["load", "node parameters", "msg/s", "node CPU %", "node µs CPU/msg", "core-only µs CPU/msg",
                   "node/core CPU", f"µs/msg vs {base[0]} {base[1]}", f"CPU % vs {base[0]} {base[1]}"]  # fmt: skip
    ratio_rows = [[row[0], row[1], row[10] / rows[0][10], row[8] / rows[0][8]] for row in rows if row[0] != rows[0][0]]
    body = (
        "; ".join(loads_text) + ". Published in real time by a separate process with header stamps at publish time; "
        "node with its default parameters (sensor_data QoS in, reliable out, input thread, contributions for "
        'anomalous windows) plus those listed; "shipped" = what config/timeseries_anomaly.yaml sets otherwise.'
        f" Load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_before)}"
        f" at the start of the node runs, {'/'.join(f'{x:.2f}' for x in load_after)} at the end ({os.cpu_count()} "
        "CPUs; other jobs on them show up directly in the tail).\n\n"
        + markdown_table(headers, rows)
        + "\nproc = receipt -> message processed (every message); score = receipt of the message that closed a window "
        "-> score published; queue wait = receipt -> taken by the scoring thread (every message); node scoring = "
        "wall time of the core's poll that scored a window inside the node, when the window closes (features + model; "
        "for a window prepared ahead, i.e. whose signal features the node computed once its inputs were final, one "
        "tick before its end, only the rest: CAN timing, rejected-input check, model; the contributions of an "
        "anomalous window are computed after its score is published and go to ~/explanation) "
        "(all four from the node's own /diagnostics, receipt = the middleware's receive time); core-only scoring = "
        "the whole polls on the same events offline in this process, one thread, nothing prepared, contributions "
        "included (baseline, same run); e2e = window end (= publish time of the data) -> score received by another "
        "process. Target: no drops, "
        f"score p99 <= 5 ms. cpu_affinity:=[{pin}] pins all the node's threads to CPU {pin} and runs the publisher on "
        "the other CPUs; thread_priority:=50 runs the node's threads under SCHED_FIFO (how a vehicle computer would "
        "run it).\n\n"
        "CPU (psutil, % of one core) against the core alone in the same run:\n\n"
        + markdown_table(cpu_headers, cpu_rows)
    )
    if ratio_rows:
        body += "\nLatency against the first load's defaults row (same run):\n\n" + markdown_table(
            ["load", "node parameters", "score p99 ratio", "proc p99 ratio"], ratio_rows
        )
    if "1000" in paced and rows[0][0] == LOADS["1000"].split(" (")[0]:
        body += (
            "\nThe core alone (defaults, ~1,000 msg/s), one thread, no ROS: the same polls back to back, and fed in "
            "real time (sleeping until each message's stamp, as the node waits for input), against the node's scoring "
            "time at window close:\n\n"
            + markdown_table(
                ["poll that scores a window", "p50 ms", "p99 ms"],
                [
                    ["core alone, back to back", rows[0][15], rows[0][16]],
                    ["core alone, in real time", *paced["1000"]],
                    *[[f"node ({row[1]})", row[13], row[14]] for row in rows if row[0] == rows[0][0]][:2],
                ],
            )
        )
    write_result(args.out, "timeseries_anomaly_node at ~1,000 messages/s and on a saturated 500 kbit/s bus", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
