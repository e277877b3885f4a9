"""Live replay: start the nodes as processes, play a bag into them over DDS and record what they publish.

This is ``ros2 launch`` + ``ros2 bag play`` + ``ros2 bag record`` for a machine without ros2cli: the nodes run as
their own processes (``python -m <node module> --ros-args --params-file <yaml>``), exactly as a launch file starts
them, and one player/recorder process (this one) publishes the bag's inputs and records the nodes' outputs into a
second bag. The player logs the wall-clock time of every publish so that end-to-end latency (input published ->
output received) can be measured per message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

READY_QUIET_S = 0.5  # once the expected outputs are in, stop after this long without a new message
# Once every node subscription is visible to the player, wait this long before the first message so that the
# nodes' side of DDS discovery has matched the player too (otherwise the head of the bag can be lost under load).
DISCOVERY_SETTLE_S = 3.0
# Writer history of the replayed inputs: when the CPU is starved the player falls behind and then publishes its
# backlog at several times the bag's rate; this many samples per topic stay available to a subscriber that lags.
REPLAY_QOS_DEPTH = 10_000


@dataclass
class NodeLaunch:
    """One node process: its module (``python -m``), node name and parameters."""

    name: str
    module: str
    params: dict[str, Any]
    remaps: dict[str, str] = field(default_factory=dict)

    def command(self, params_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", self.module, "--ros-args", "--params-file", str(params_file)]
        for src, dst in self.remaps.items():
            cmd += ["-r", f"{src}:={dst}"]
        return cmd


@dataclass
class RunningNodes:
    procs: list[tuple[NodeLaunch, subprocess.Popen]]
    log_dir: Path

    def alive(self) -> dict[str, bool]:
        return {n.name: p.poll() is None for n, p in self.procs}

    def logs(self) -> dict[str, str]:
        out = {}
        for n, _ in self.procs:
            path = self.log_dir / f"{n.name}.log"
            out[n.name] = path.read_text(errors="replace") if path.exists() else ""
        return out

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGINT every node (clean shutdown), SIGKILL what is still there after ``timeout_s``."""
        for _, p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def start_nodes(launches: Iterable[NodeLaunch], log_dir: str | Path | None = None) -> RunningNodes:
    """Start every node in its own process group; output goes to ``<log_dir>/<name>.log``."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="flow_anomaly_nodes_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ROS_LOG_DIR", str(log_dir / "ros"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    procs = []
    for launch in launches:
        params_file = log_dir / f"{launch.name}.yaml"
        params_file.write_text(yaml.safe_dump({launch.name: {"ros__parameters": launch.params}}, sort_keys=False))
        log = open(log_dir / f"{launch.name}.log", "w")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            launch.command(params_file), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        procs.append((launch, proc))
    return RunningNodes(procs, log_dir)


@dataclass
class LiveRun:
    """What a live replay produced: the recorded outputs and when each input was published."""

    outputs_bag: Path
    publish_wall_ns: dict[str, dict[int, int]]  # input topic -> header/bag stamp ns -> wall ns of publish
    published: dict[str, int]
    recorded: dict[str, int]
    play_wall_s: float
    failed_publishes: int


def replay_and_record(
    bag: str | Path,
    outputs_bag: str | Path,
    output_topics: Mapping[str, str],
    *,
    rate: float = 1.0,
    input_topics: Iterable[str] | None = None,
    wait_topics: Iterable[str] = (),
    wait_timeout_s: float = 60.0,
    outputs_ready: Callable[[dict[str, int]], bool] | None = None,
    settle_s: float = 3.0,
    max_drain_s: float = 60.0,
    progress: Any | None = None,
    storage: str = "mcap",
) -> LiveRun:
    """Record ``output_topics`` (topic -> type) while playing ``bag``; returns once outputs stopped arriving.

    Playback starts when every topic in ``wait_topics`` has a subscriber (the nodes are up). After the last input,
    recording continues until no output arrived for ``READY_QUIET_S`` once ``outputs_ready(counts)`` is true, or
    for ``settle_s`` otherwise (bounded by ``max_drain_s``), so the nodes' last results are not cut off.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from flow_anomaly_ros.ros.bag_player import BagPlayer
    from flow_anomaly_ros.ros.bag_recorder import BagRecorder

    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args"])
    node = rclpy.create_node("flow_anomaly_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    recorder = BagRecorder(node, outputs_bag, topics=list(output_topics), types=dict(output_topics), storage=storage)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    publish_log: dict[str, dict[int, int]] = {}

    def on_publish(msg, wall_ns: int) -> None:
        publish_log.setdefault(msg.topic, {})[msg.stamp_ns] = wall_ns

    try:
        player = BagPlayer(
            node,
            bag,
            rate=rate,
            topics=input_topics,
            wait_for_subscribers=1 if wait_topics else 0,
            wait_topics=list(wait_topics),
            wait_timeout_s=wait_timeout_s,
            settle_s=DISCOVERY_SETTLE_S,
            progress=progress,
            on_publish=on_publish,
            qos_depth=REPLAY_QOS_DEPTH,
        )
        stats = player.play()
        player.wait_for_all_acked(5.0)
        last_total, last_change = -1, time.monotonic()
        drain_start = time.monotonic()
        while time.monotonic() - drain_start < max_drain_s:
            counts = dict(recorder.counts)
            total = sum(counts.values())
            if total != last_total:
                last_total, last_change = total, time.monotonic()
            quiet = time.monotonic() - last_change
            ready = outputs_ready is not None and outputs_ready(counts)
            if quiet > (READY_QUIET_S if ready else settle_s):
                break
            time.sleep(0.05)
        player.close()
    finally:
        recorder.close()
        executor.shutdown()
        spin.join(timeout=5.0)  # out of rclpy's wait before the node and context go (see bag_cli._cmd_play)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return LiveRun(
        outputs_bag=Path(outputs_bag),
        publish_wall_ns=publish_log,
        published=dict(stats.published),
        recorded=dict(recorder.counts),
        play_wall_s=stats.wall_s,
        failed_publishes=sum(stats.failed.values()),
    )
