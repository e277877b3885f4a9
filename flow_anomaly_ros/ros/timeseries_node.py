"""``timeseries_anomaly_node``: live CAN/IMU anomaly scoring on the vehicle (thin shell around the core).

Subscribes to ``sensor_msgs/Imu`` topics and to ``can_msgs/msg/Frame`` on ``from_can_bus`` (ros2_socketcan), feeds
every message, stamped with its header time, to the time-series core's
:class:`flow_anomaly_ros.timeseries.pipeline.StreamingScorer` (the same class ``score_recording`` uses offline, so live
and offline scores are identical), and publishes one ``flow_anomaly_ros/msg/AnomalyScore`` per window on ``~/score``
(optionally the bare value on ``~/score_value``), the per-feature contributions of anomalous windows right after on
``~/explanation`` (a flag does not wait for its why), plus health on ``/diagnostics``. The node owns no algorithm: DBC
decoding, resampling, windows, normalisation, staleness and scoring all live in the core.

Wiring, and why:
- Lifecycle node (like ros2_socketcan) from :class:`ManagedAnomalyNode`: configure loads and checks the model
  (missing, corrupt or mismatched -> MODEL_ERROR on ``/diagnostics``, node stays up and retries, no scores),
  activate starts the subscriptions. ``autostart`` (default true) does both without a lifecycle manager.
- Input messages are taken by an :class:`~flow_anomaly_ros.ros.input_pump.InputPump` thread, not by the rclpy
  executor, which costs ~650 µs of CPU per message on this machine against ~80 µs for the pump (measured, see that
  module); CAN frames arrive serialized and are read with ``struct`` (``can_event_from_cdr``). ``input_thread:=false``
  goes back to executor callbacks (each taking its topic's whole backlog per turn). Either way the handlers only
  convert the message to an event and append it to a bounded queue; a worker thread drains the queue, scores and
  publishes. A flood therefore cannot grow memory: when the queue is full the message is dropped and counted, and
  every window overlapping a drop, or a transport loss seen as a gap in the publisher's sequence numbers, is
  published as INVALID_INPUT.
- Time is message time (header stamps), so bags replay correctly with or without ``use_sim_time``. A window is scored
  once every input topic has passed its end (a watermark: topics arrive in order but not in step), which is what makes
  live scores equal offline ones. A stamp more than ``clock_jump_back_s`` behind its topic's newest one is a clock
  jump (a looping bag): the core is reset, the reset is logged, counted and named in the next scores' status message
  and in diagnostics. When every input is silent, message time is advanced by the node clock (ROS time, so sim time
  when ``use_sim_time``) after ``input_timeout_s`` so that the core can report STALE_INPUT instead of going quiet.
- Latency is measured from the middleware's receive time of a message, so waiting to be taken counts.
  What keeps it down: configure warms the model up and freezes the loaded objects out of the garbage collector;
  input waits at a gate while a window is scored (the input thread would otherwise take the GIL each time
  scoring releases it); ``cpu_affinity`` pins the process's threads to CPUs where the window's code stays in cache,
  ``thread_priority`` puts them under SCHED_FIFO (both in :mod:`flow_anomaly_ros.ros.scheduling`).

Example::

    python -m flow_anomaly_ros.ros.timeseries_node --ros-args -p model_dir:=models/ts_realnvp \\
        -p imu_topics:="['/imu/data']" -p can_topic:=/from_can_bus
"""

from __future__ import annotations

import dataclasses
import gc
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from std_msgs.msg import Float32

from flow_anomaly_ros.msg import AnomalyScore
from flow_anomaly_ros.ros.can_conversion import CanTypeMissing, can_event_from_cdr, frame_type
from flow_anomaly_ros.ros.diagnostics import ERROR, OK, WARN, Health
from flow_anomaly_ros.ros.imu_conversion import imu_event, seconds_to_stamp
from flow_anomaly_ros.ros.input_pump import InputPump, pump_available
from flow_anomaly_ros.ros.managed_node import ManagedAnomalyNode, Param, run_node
from flow_anomaly_ros.ros.qos import QOS_NAMES, qos_from_name
from flow_anomaly_ros.ros.scheduling import cpu_list_problem, pin_threads, set_realtime
from flow_anomaly_ros.stats import LatencyWindow
from flow_anomaly_ros.timeseries.bounded_queue import BoundedQueue
from flow_anomaly_ros.timeseries.pipeline import CONTRIBUTIONS
from flow_anomaly_ros.timeseries.status import INVALID_INPUT as STATUS_INVALID_INPUT
from flow_anomaly_ros.timeseries.status import OK as STATUS_OK
from flow_anomaly_ros.timeseries.status import STATUS_NAMES

NODE_NAME = "timeseries_anomaly_node"
DRAIN_MAX = 256  # messages a subscription callback takes from its backlog in one executor turn
RESET_NOTICE_S = 10.0  # diagnostics keep naming the last reset (and WARN) this long, in node-clock seconds


def _check_topics(value: Any) -> str | None:
    if any(not isinstance(t, str) or not t.strip() for t in value):
        return "topic names must be non-empty strings"
    if len(set(value)) != len(value):
        return "topic names must be unique"
    return None


PARAMS: tuple[Param, ...] = (
    Param("model_dir", "", "trained time-series model directory (written by `flow-anomaly ts train`)"),
    Param("dbc_file", "", "DBC file that decodes the CAN frames (empty: the DBC recorded in the model)"),
    Param(
        "contributions",
        "anomalous",
        "which windows get per-feature contributions, published on ~/explanation right after their score on ~/score: "
        "anomalous ones (the why of a flag), all, or none (occlusion attribution: one batched model pass over d + 1 "
        "rows, ~4x the cost of the score)",
        choices=CONTRIBUTIONS,
    ),
    Param("imu_topics", ["imu/data"], "sensor_msgs/Imu topics, one per IMU source", check=_check_topics),
    Param("imu_sources", ["imu"], "model source name of each entry of imu_topics (same length)"),
    Param("can_topic", "from_can_bus", "can_msgs/msg/Frame topic of ros2_socketcan (empty: no CAN input)"),
    Param("input_qos", "sensor_data", "QoS profile of the input subscriptions", choices=QOS_NAMES),
    Param("input_qos_depth", 100, "history depth of the inputs (0: the profile's default)", min=0, max=100000),
    Param("output_qos", "reliable", "QoS profile of ~/score and ~/score_value", choices=QOS_NAMES),
    Param("output_qos_depth", 10, "history depth of the outputs", min=1, max=10000),
    Param("publish_score_value", False, "also publish the bare score on ~/score_value (std_msgs/Float32)"),
    Param("frame_id", "base_link", "header.frame_id of published scores"),
    Param(
        "stamp_source",
        "header",
        "time of a message: its header stamp, or the node clock at receipt (for drivers that leave it zero)",
        choices=("header", "receipt"),
    ),
    Param(
        "input_batch_s",
        0.0,
        "after a message, wait this long and take the topic's backlog at once (fewer executor wake-ups)",
        min=0.0,
        max=0.02,
    ),
    Param(
        "input_thread",
        True,
        "take input messages on a thread of the node's own (false: rclpy executor callbacks, ~5x the CPU per message)",
    ),
    Param("queue_size", 10000, "bounded input queue between callbacks and scoring (full: drop and count)", min=8),
    Param(
        "max_input_wait_s",
        0.5,
        "scoring waits for every input topic, except one silent this long (wall time since its last message)",
        min=0.0,
        max=10.0,
    ),
    Param("clock_jump_back_s", 1.0, "a stamp this far behind the newest one is a clock jump: reset", min=0.001),
    Param(
        "input_timeout_s", 1.0, "all inputs silent this long (node clock): advance time so windows go STALE", min=0.0
    ),
    Param(
        "thread_priority",
        0,
        "SCHED_FIFO real-time priority of all the node process's threads at activation (0: normal scheduling)",
        min=0,
        max=99,
    ),
    Param(
        "cpu_affinity",
        [],
        "CPUs to pin all the node process's threads to at activation, e.g. [3] (empty: any CPU); see scheduling.py",
        check=cpu_list_problem,
    ),
)


class ModelError(RuntimeError):
    """The model is missing, corrupt or does not match the configured inputs (MODEL_ERROR)."""


class TimeseriesAnomalyNode(ManagedAnomalyNode):
    """Scores sliding windows of IMU and CAN input with a trained time-series detector."""

    PARAMS = PARAMS

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        self.scorer = None
        self._score_pub = None
        self._value_pub = None
        self._explanation_pub = None
        self._subs: list[Any] = []
        self._pump: InputPump | None = None
        self.input_path = "none"  # how input messages are taken (input_thread), named on /diagnostics
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue = BoundedQueue(1)
        self._core_lock = threading.Lock()
        # Held by the scoring thread while it scores a window and publishes; input (pump or callbacks) passes through
        # it before each round of takes. Scoring releases the GIL many times (numpy, ONNX Runtime), and each time the
        # input thread would otherwise take it for a round of takes; parked here instead, it costs the scoring thread
        # at most one round per window. Messages meanwhile wait in DDS (input_qos_depth).
        self._scoring = threading.Lock()
        self._stats_lock = threading.Lock()
        self.model_error: str | None = None
        self.realtime = "off"  # scheduling of the node's threads (thread_priority), named on /diagnostics
        self.cpu_affinity = "off"  # where they run (cpu_affinity), named on /diagnostics
        self._reset_stats()
        super().__init__(node_name, **kwargs)
        self._frame_cls = None
        try:
            self._frame_cls = frame_type()
        except CanTypeMissing as exc:
            self.get_logger().error(str(exc))
            self._frame_missing = str(exc)
        else:
            self._frame_missing = None

    # ----- state shared by the callbacks, the worker and diagnostics --------------------------------------------
    def _reset_stats(self) -> None:
        self.received: Counter[str] = Counter()  # per input source
        self.lost_in_transport: Counter[str] = Counter()  # per input source, from publisher sequence-number gaps
        self._last_seq: dict[bytes, int] = {}  # per publisher (gid): latest publication sequence number
        self._last_stamp_of: dict[str, float] = {}  # per input topic: stamp of the latest message received
        self.received_can_id: Counter[int] = Counter()
        self.rejected = 0  # messages the core (or the node) refused; categories are in the core's counters
        self.last_rejection = ""
        self.windows_by_status: Counter[str] = Counter()
        self.windows_published = 0
        self.explanations_published = 0
        self.anomalies = 0
        self.resets = 0
        self.last_reset_reason = ""
        self._last_reset_clock = -math.inf
        self._pending_reset_note = ""
        self.processing_errors = 0
        self.last_processing_error = ""
        self.last_result = None
        self._newest_stamp = -math.inf
        self._newest_by_input: dict[str, float] = {}  # message time reached by each input topic
        self._last_recv_by_input: dict[str, float] = {}  # wall receipt time of each input topic's latest message
        self._inputs: list[str] = []  # input sources the watermark waits for (IMU source names, "can")
        self._first_recv: float | None = None  # receipt time of the first input message since activation/reset
        self._last_receipt_clock = None
        self._drop_lo, self._drop_hi = math.inf, -math.inf  # stamps of dropped messages not yet covered by windows
        self._last_rate_snapshot: tuple[float, Counter[str]] | None = None
        self._rates: tuple[dict[str, float], dict[int, float]] = ({}, {})
        self.proc_latency = LatencyWindow(20000)  # receipt -> event processed (pushed, windows scored, published)
        self.score_latency = LatencyWindow(1000)  # receipt of the message closing a window -> its score published
        # Where score latency goes: waiting (executor, queue, GIL) vs the core's own work on the scoring thread.
        self.queue_wait = LatencyWindow(20000)  # receipt -> the scoring thread takes the message off the queue
        self.poll_time = LatencyWindow(1000)  # wall time of a core poll that scored windows (features + model)

    # ----- lifecycle ---------------------------------------------------------------------------------------------
    def validate_params(self, values: dict[str, Any]) -> list[str]:
        problems = []
        if not values["model_dir"]:
            problems.append("model_dir is empty: give the directory written by `flow-anomaly ts train`")
        if len(values["imu_sources"]) != len(values["imu_topics"]):
            problems.append(
                f"imu_sources has {len(values['imu_sources'])} entries but imu_topics has {len(values['imu_topics'])}"
            )
        if len(set(values["imu_sources"])) != len(values["imu_sources"]):
            problems.append("imu_sources must be unique")
        if values["dbc_file"] and not Path(values["dbc_file"]).is_file():
            problems.append(f"dbc_file={values['dbc_file']!r} does not exist")
        if values["can_topic"] and self._frame_missing:
            problems.append(self._frame_missing)
        return problems

    def configure_core(self, params: dict[str, Any]) -> None:
        self.model_error = None
        try:
            self.scorer = self._load_scorer(params)
        except ModelError as exc:
            self.scorer = None
            self.model_error = str(exc)
            raise
        out_qos = qos_from_name(params["output_qos"], params["output_qos_depth"])
        self._score_pub = self.create_lifecycle_publisher(AnomalyScore, "~/score", out_qos)
        if params["publish_score_value"]:
            self._value_pub = self.create_lifecycle_publisher(Float32, "~/score_value", out_qos)
        if self.scorer.with_contributions:
            self._explanation_pub = self.create_lifecycle_publisher(AnomalyScore, "~/explanation", out_qos)
        # Everything loaded so far (torch, rclpy, cantools, the model: ~250k objects) lives as long as the node. A full
        # collection scanning it takes ~300 ms on this machine, a pause the scoring thread would feel as latency;
        # frozen objects are skipped by the collector.
        gc.collect()
        gc.freeze()
        self.get_logger().info(
            f"model {self.scorer.model_id}: threshold {self.scorer.threshold:.4g}, "
            f"{len(self.scorer.feature_names)} features from signals {list(self.scorer.signal_names)}"
        )

    def _load_scorer(self, params: dict[str, Any]) -> Any:
        """Load the model, check it against the configured inputs and build the core's streaming scorer.

        Raises :class:`ModelError` (reported as MODEL_ERROR) when the model directory is missing or corrupt, or when
        the model needs inputs this node is not configured for (IMU sources, CAN, another DBC).
        """
        from flow_anomaly_ros.model_store import ModelFileError
        from flow_anomaly_ros.timeseries.pipeline import StreamingScorer, load_timeseries_model
        from flow_anomaly_ros.timeseries.signals import ConfigError, check_compatible

        try:
            model = load_timeseries_model(params["model_dir"])
            check_compatible(
                model.config,
                {
                    "imu_sources": params["imu_sources"],
                    "dbc": params["dbc_file"] or None,
                    "can_enabled": bool(params["can_topic"]),
                },
            )
            if params["dbc_file"]:  # decode with the given file (same DBC name as the model's, checked above)
                model.config = dataclasses.replace(model.config, dbc=params["dbc_file"])
            scorer = StreamingScorer(model, contributions=params["contributions"])
        except (ModelFileError, ConfigError, FileNotFoundError) as exc:
            raise ModelError(str(exc)) from exc
        try:  # a model that cannot score is a model error now, not a MODEL_ERROR window later
            scorer.warm_up()  # and the first live window does not pay for the back-end's lazy set-up
        except Exception as exc:  # back-ends raise their own exception types
            raise ModelError(f"model at {params['model_dir']} cannot score: {type(exc).__name__}: {exc}") from exc
        return scorer

    def activate_core(self) -> None:
        params = self.params
        self._reset_stats()
        self._queue = BoundedQueue(params["queue_size"])
        self._stop.clear()
        from sensor_msgs.msg import Imu

        in_qos = qos_from_name(params["input_qos"], params["input_qos_depth"] or None)
        self._inputs = list(params["imu_sources"]) + (["can"] if params["can_topic"] else [])
        self._first_recv = None
        subscribe = self._subscribe
        unavailable = pump_available() if params["input_thread"] else "input_thread is false"
        if unavailable is None:
            self._pump = InputPump(
                self,
                on_error=self._input_error,
                after_round=self._score_queued,  # scoring on the input thread: no hand-over, no GIL contention
                batch_s=params["input_batch_s"],
                drain_max=DRAIN_MAX,
                name="ts_input",
            )
            subscribe = self._pump.subscribe
            self.input_path = "input thread"
        else:
            self.input_path = f"executor callbacks ({unavailable})"
            if params["input_thread"]:
                self.get_logger().warn(f"input_thread: {unavailable}; taking input in executor callbacks")
        for topic, source in zip(params["imu_topics"], params["imu_sources"]):
            self._subs.append(subscribe(Imu, topic, self._imu_callback(source), in_qos))
        if params["can_topic"]:  # serialized: decoded by can_event_from_cdr (see can_conversion)
            self._subs.append(subscribe(self._frame_cls, params["can_topic"], self._on_can, in_qos, raw=True))
        if self._pump is not None:
            self._pump.start()
        else:
            self._worker = threading.Thread(target=self._work, name="ts_scoring", daemon=True)
            self._worker.start()
        if params["cpu_affinity"]:
            self.cpu_affinity = pin_threads(params["cpu_affinity"])
            if self.cpu_affinity.startswith("refused"):
                self.get_logger().warn(f"cpu_affinity={list(params['cpu_affinity'])}: {self.cpu_affinity}")
            else:
                self.get_logger().info(f"threads pinned to {self.cpu_affinity}")
        if params["thread_priority"] > 0:
            self.realtime = set_realtime(params["thread_priority"])
            if self.realtime.startswith("refused"):
                self.get_logger().warn(f"thread_priority={params['thread_priority']}: {self.realtime}")
            else:
                self.get_logger().info(f"threads now {self.realtime}")

    def _wait_for_scoring(self) -> None:
        with self._scoring:  # let a window being scored finish first (see __init__)
            pass

    def _input_error(self, exc: BaseException) -> None:
        """A message the input thread could not hand over (or the thread itself failing): counted, on diagnostics."""
        self.processing_errors += 1
        self.last_processing_error = f"input: {type(exc).__name__}: {exc}"
        self.get_logger().error(self.last_processing_error)

    def _subscribe(
        self, msg_type: Any, topic: str, handle: Callable[[Any, Any], None], qos: Any, raw: bool = False
    ) -> Any:
        """(input_thread false) A subscription whose callback also takes what else is already queued for it (up to
        DRAIN_MAX).

        rclpy's executor rebuilds its wait set (every service, timer and event of the node) for each message it
        takes, which costs several times more than handling a CAN frame; taking a topic's backlog in one go cuts
        that to once per burst. Uses the same take call as rclpy's executor; where it is unavailable the executor
        simply delivers the rest one by one.
        """
        holder: list[Any] = []
        batch_s = self.params["input_batch_s"]

        def callback(msg: Any, info: Any) -> None:
            self._wait_for_scoring()
            handle(msg, info)
            if batch_s > 0:
                time.sleep(batch_s)
            sub = holder[0]
            for _ in range(DRAIN_MAX):
                try:
                    with sub.handle:
                        taken = sub.handle.take_message(sub.msg_type, sub.raw)
                except Exception:  # destroyed meanwhile, or an rclpy without this call
                    return
                if taken is None:
                    return
                handle(*taken)

        sub = self.create_subscription(msg_type, topic, callback, qos, raw=raw)
        holder.append(sub)
        return sub

    def _stop_input(self) -> None:
        if self._pump is not None:
            self._pump.stop()  # also destroys its subscriptions
            self._pump = None
        else:
            for sub in self._subs:
                self.destroy_subscription(sub)
        self._subs = []
        self.input_path = "none"

    def deactivate_core(self) -> None:
        self._stop_input()
        self._stop.set()
        self._queue.wake()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
            if self.scorer is not None:  # nothing from before a deactivation leaks into the windows after it
                self.scorer.reset("deactivated")

    def destroy_node(self) -> None:
        """Stop the input and scoring threads before the node goes (run_node destroys nodes without a lifecycle
        shutdown)."""
        self._stop_input()
        self._stop.set()
        self._queue.wake()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        super().destroy_node()

    def cleanup_core(self) -> None:
        for pub in (self._score_pub, self._value_pub, self._explanation_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._score_pub = self._value_pub = self._explanation_pub = None
        self.scorer = None

    # ----- callbacks: convert and enqueue, nothing else -------------------------------------------------------------
    def _stamp_override(self) -> float | None:
        if self.params["stamp_source"] == "receipt":
            return self.get_clock().now().nanoseconds * 1e-9
        return None

    def _receipt(self, source: str, stamp: float, info: dict[str, Any]) -> float:
        """Wall time the middleware received the message (so latency includes waiting for the executor).

        Also counts messages lost in transport, from gaps in the publisher's sequence numbers (best-effort QoS
        overwrites them when the node falls behind): they were stamped between this topic's previous message and
        this one, so the windows over that stretch are marked INVALID_INPUT like drops of the node's own queue.
        """
        seq, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
        if seq and gid:
            key = bytes(gid["data"])
            last = self._last_seq.get(key)
            if last is not None and seq > last + 1:
                self.lost_in_transport[source] += seq - last - 1
                self._note_drop(self._last_stamp_of.get(source, stamp))
                self._note_drop(stamp)
            if last is None or seq > last:
                self._last_seq[key] = seq
        self._last_stamp_of[source] = stamp
        received_ns = info.get("received_timestamp") or 0
        return received_ns * 1e-9 if received_ns > 0 else time.time()

    def _imu_callback(self, source: str) -> Callable[[Any, Any], None]:
        def on_imu(msg: Any, info: dict[str, Any]) -> None:
            event = imu_event(msg, self._stamp_override())
            t_recv = self._receipt(source, event[0], info)
            self.received[source] += 1
            if not self._queue.put((t_recv, "imu", source, event)):
                self._note_drop(event[0])

        return on_imu

    def _on_can(self, raw: bytes, info: dict[str, Any]) -> None:
        try:
            event, is_rtr = can_event_from_cdr(raw, self._frame_cls, self._stamp_override())
        except ValueError as exc:
            self.received["can"] += 1
            self._reject(f"can: {exc}")
            return
        t_recv = self._receipt("can", event[0], info)
        self.received["can"] += 1
        self.received_can_id[event[1]] += 1
        if is_rtr:
            self._reject("can: remote (RTR) frame carries no data")
            return
        if not self._queue.put((t_recv, "can", "can", event)):
            self._note_drop(event[0])

    def _note_drop(self, stamp: float) -> None:
        if not math.isfinite(stamp):
            return
        with self._stats_lock:
            self._drop_lo = min(self._drop_lo, stamp)
            self._drop_hi = max(self._drop_hi, stamp)

    # ----- scoring thread --------------------------------------------------------------------------------------------
    def _work(self) -> None:
        """(input_thread false) The scoring thread: input arrives in executor callbacks on another thread."""
        while not self._stop.is_set():
            self._score_queued(timeout=0.05)

    def _score_queued(self, timeout: float = 0.0) -> None:
        """Score what is queued (waiting up to ``timeout`` for it); with nothing queued, check for silent inputs."""
        batch = self._queue.take_all(timeout)
        try:
            if batch:
                self._process(batch)
            else:
                self._advance_when_silent()
        except Exception as exc:  # never let one bad batch kill scoring; say so on diagnostics
            self.processing_errors += 1
            self.last_processing_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"processing failed: {self.last_processing_error}")

    def _process(self, batch: list[Any]) -> None:
        scorer = self.scorer
        featurizer = scorer.featurizer
        jump = self.params["clock_jump_back_s"]
        max_wait = self.params["max_input_wait_s"]
        newest_of = self._newest_by_input
        last_recv = self._last_recv_by_input
        t_taken = time.time()
        poll_times = []
        for t_recv, kind, source, event in batch:
            stamp = event[0]
            results = None
            with self._core_lock:
                newest = newest_of.get(source, -math.inf)
                if stamp < newest - jump:  # compared within one topic: topics arrive in order, not in step
                    self._reset_core(
                        f"clock jumped back {newest - stamp:.3f} s on {source} (looping bag?): state reset"
                    )
                if kind == "imu":
                    reason = scorer.push_imu(stamp, event[1], event[2], source=source)
                else:
                    reason = scorer.push_can(stamp, event[1], event[2], event[3], event[4], event[5])
                if reason is not None:
                    self._reject(reason)
                # Every event moves its input's message time on, as offline (a NaN stamp never does).
                last_recv[source] = t_recv
                if stamp > newest_of.get(source, -math.inf):
                    newest_of[source] = stamp
                    self._newest_stamp = max(self._newest_stamp, stamp)
                    # Watermark: a window is final once every input topic passed its end (each topic arrives in
                    # order, but not in step with the others: rclpy takes one message per topic in turn, so under
                    # load the low-rate IMU runs ahead of CAN). A topic silent for max_input_wait_s (receipt time)
                    # is not waited for; its signals then go stale in the windows.
                    # An input not heard from yet counts as silent since the first message of any input, so the
                    # first windows wait for it too (else they are scored before its first message arrives).
                    if self._first_recv is None:
                        self._first_recv = t_recv
                    horizon = min(
                        (
                            newest_of.get(k, -math.inf)
                            for k in self._inputs
                            if t_recv - last_recv.get(k, self._first_recv) <= max_wait
                        ),
                        default=newest_of[source],  # this event's own input is never silent
                    )
                    next_end = featurizer.next_window_end
                    if next_end is not None and horizon < next_end:
                        # Inputs are final up to the horizon: the next window's signal part can be computed now,
                        # ahead of its end (exact; see WindowFeaturizer.prepare), not when it closes.
                        featurizer.prepare(horizon)
                    elif next_end is not None:
                        with self._scoring:
                            t_poll = time.perf_counter()
                            results = scorer.poll(horizon, explain=False)
                            if results:
                                poll_times.append(time.perf_counter() - t_poll)
                                self._publish_explanations(results, self._publish(results, t_recv))
        self._last_receipt_clock = self.get_clock().now().nanoseconds * 1e-9
        done = time.time()
        with self._stats_lock:
            for t_recv, *_ in batch:
                self.proc_latency.add(done - t_recv)
                self.queue_wait.add(t_taken - t_recv)
            for seconds in poll_times:
                self.poll_time.add(seconds)

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.last_rejection = reason

    def _reset_core(self, reason: str) -> None:
        self.scorer.reset(reason)
        self.resets += 1
        self.last_reset_reason = reason
        self._pending_reset_note = reason
        self._last_reset_clock = self.get_clock().now().nanoseconds * 1e-9
        self._newest_stamp = -math.inf
        self._newest_by_input.clear()
        self._last_recv_by_input.clear()
        self._first_recv = None
        with self._stats_lock:
            self._drop_lo, self._drop_hi = math.inf, -math.inf
        self.get_logger().warn(reason)

    def _advance_when_silent(self) -> None:
        """All inputs silent: move message time on by the node clock so the core can report STALE_INPUT."""
        timeout = self.params["input_timeout_s"]
        if timeout <= 0 or self._last_receipt_clock is None or not math.isfinite(self._newest_stamp):
            return
        silent_s = self.get_clock().now().nanoseconds * 1e-9 - self._last_receipt_clock
        if silent_s <= timeout:
            return
        t0 = time.time()
        horizon = self._newest_stamp + silent_s - self.params["max_input_wait_s"]
        with self._core_lock:
            results = self.scorer.poll(horizon, explain=False)
            if results:
                self._publish_explanations(results, self._publish(results, t0, count_latency=False))

    def _publish(self, results: list[Any], t_trigger: float, count_latency: bool = True) -> list[AnomalyScore]:
        """Publish the scores (latency: ``t_trigger`` -> published); returns their messages."""
        messages = []
        for result in results:
            msg = self._to_message(result)
            messages.append(msg)
            self._score_pub.publish(msg)
            if self._value_pub is not None:
                self._value_pub.publish(Float32(data=float(msg.score)))
            self.windows_published += 1
            self.windows_by_status[STATUS_NAMES.get(msg.status, str(msg.status))] += 1
            self.anomalies += int(msg.is_anomaly)
            self.last_result = msg
        if count_latency:
            latency = time.time() - t_trigger
            with self._stats_lock:
                self.score_latency.add(latency)
        return messages

    def _publish_explanations(self, results: list[Any], messages: list[AnomalyScore]) -> None:
        """After the scores are out: the contributions of the windows the ``contributions`` mode selects, each as
        its score's message plus ``feature_names`` / ``feature_contributions`` on ``~/explanation``. A flag does
        not wait for its explanation: attribution costs ~4x the score (one model pass over d + 1 rows), and on the
        anomalous windows it was what set the p99 latency of the scores (measured, docs/timeseries_node.md)."""
        if self._explanation_pub is None:
            return
        self.scorer.explain(results)
        for result, msg in zip(results, messages):
            if not result.contributions or msg.status != STATUS_OK:  # not selected, or INVALID_INPUT by a drop
                continue
            msg.feature_names = list(result.feature_names)
            msg.feature_contributions = [float(c) for c in result.contributions]
            self._explanation_pub.publish(msg)
            self.explanations_published += 1

    def _to_message(self, result: Any) -> AnomalyScore:
        status, status_message = int(result.status), str(result.status_message)
        with self._stats_lock:
            if self._drop_lo < result.end_s and self._drop_hi >= result.start_s:  # window is [start, end)
                status = STATUS_INVALID_INPUT if status == STATUS_OK else status
                status_message = "; ".join(
                    m
                    for m in (
                        status_message,
                        "input messages dropped (queue full) or lost in transport inside this window",
                    )
                    if m
                )
            if result.start_s > self._drop_hi:
                self._drop_lo, self._drop_hi = math.inf, -math.inf
        if self._pending_reset_note:
            status_message = "; ".join(m for m in (status_message, self._pending_reset_note) if m)
            if status == STATUS_OK:
                self._pending_reset_note = ""
        msg = AnomalyScore()
        msg.header.stamp = seconds_to_stamp(result.end_s)
        msg.header.frame_id = self.params["frame_id"]
        msg.window_start = seconds_to_stamp(result.start_s)
        msg.source = self.scorer.model_id
        msg.score = float(result.score)
        msg.threshold = float(result.threshold)
        msg.is_anomaly = bool(result.is_anomaly) and status == STATUS_OK
        msg.status = status
        msg.status_message = status_message
        return msg

    # ----- diagnostics -----------------------------------------------------------------------------------------------
    def _diagnostics_items(self) -> Health | list[tuple[str, Health]]:
        if self.model_error is not None and self.config_error is not None:
            return Health(
                ERROR,
                f"MODEL_ERROR: {self.model_error}",
                {
                    "status": "MODEL_ERROR",
                    "model_dir": self.get_parameter("model_dir").value,
                    "lifecycle_state": self.lifecycle_state,
                },
            )
        return super()._diagnostics_items()

    def _input_rates(self) -> tuple[dict[str, float], dict[int, float]]:
        """Receive rates (Hz, node clock) per input source and per CAN id since the previous report."""
        now = self.get_clock().now().nanoseconds * 1e-9
        snapshot = (Counter(self.received), Counter(self.received_can_id))
        if self._last_rate_snapshot is not None:
            t_prev, prev = self._last_rate_snapshot
            if now - t_prev > 0:
                self._rates = tuple(
                    {k: (cur[k] - old[k]) / (now - t_prev) for k in cur} for cur, old in zip(snapshot, prev)
                )
        self._last_rate_snapshot = (now, snapshot)
        return self._rates

    def _signal_status(
        self,
        source_rates: dict[str, float],
        id_rates: dict[int, float],
        last_stamps: list[float | None],
        newest_stamp: float,
    ) -> tuple[dict, list[str]]:
        """Per model signal: input rate (its IMU topic or CAN id) and whether it is stale in message time, from the
        newest stamp of each signal and of all input."""
        config = self.scorer.config
        rates, stale = {}, []
        db = None
        for spec, last in zip(config.signals, last_stamps):
            if spec.is_imu:
                rates[spec.name] = source_rates.get(spec.imu_source, 0.0)
            else:
                if db is None:
                    from flow_anomaly_ros.timeseries.signals import load_dbc

                    db = load_dbc(config.dbc)
                rates[spec.name] = id_rates.get(db.get_message_by_name(spec.can_message).frame_id, 0.0)
            if math.isfinite(newest_stamp) and (last is None or newest_stamp - last > spec.staleness_s):
                stale.append(spec.name)
        return rates, stale

    def health(self) -> Health:
        # Copies under the locks, the work outside: scoring takes both locks for every window, and this runs on
        # another thread (the executor's), so whatever it does while holding them adds to that window's latency.
        with self._stats_lock:
            latencies = [w.copy() for w in (self.proc_latency, self.score_latency, self.queue_wait, self.poll_time)]
        proc, score, wait, poll = (w.summary_ms() for w in latencies)
        with self._core_lock:
            counters = dict(self.scorer.counters)
            last_stamps = [buf.last_stamp for buf in self.scorer.featurizer.signal_buffer]
            newest_stamp = self._newest_stamp
        signal_rates, stale = self._signal_status(*self._input_rates(), last_stamps, newest_stamp)
        last = self.last_result
        dropped = self._queue.dropped
        lost = sum(self.lost_in_transport.values())
        values: dict[str, Any] = {
            "model_id": self.scorer.model_id,
            "threshold": float(self.scorer.threshold),
            "windows_published": self.windows_published,
            "anomalies": self.anomalies,
            "explanations_published": self.explanations_published,
            "last_status": STATUS_NAMES.get(last.status, "?") if last is not None else "none yet",
            "last_score": float(last.score) if last is not None else float("nan"),
            "stale_signals": ",".join(stale),
            "dropped": dropped,
            "lost_in_transport": lost,
            "rejected": self.rejected,
            "last_rejection": self.last_rejection,
            "queue_depth": len(self._queue),
            "queue_size": self._queue.capacity,
            "resets": self.resets,
            "processing_latency_p50_ms": proc["p50_ms"],
            "processing_latency_p99_ms": proc["p99_ms"],
            "score_latency_p50_ms": score["p50_ms"],
            "score_latency_p99_ms": score["p99_ms"],
            "queue_wait_p50_ms": wait["p50_ms"],
            "queue_wait_p99_ms": wait["p99_ms"],
            "scoring_time_p50_ms": poll["p50_ms"],
            "scoring_time_p99_ms": poll["p99_ms"],
            "windows_prepared_ahead": self.scorer.featurizer.prepared_windows,
            "realtime": self.realtime,
            "cpu_affinity": self.cpu_affinity,
            "input_path": self.input_path,
        }
        values.update({f"received.{k}": n for k, n in sorted(self.received.items())})
        values.update({f"rate_hz.{k}": r for k, r in sorted(self._rates[0].items())} if self._rates else {})
        values.update({f"signal_rate_hz.{k}": r for k, r in signal_rates.items()})
        values.update({f"windows.{k}": n for k, n in sorted(self.windows_by_status.items())})
        values.update({f"core.{k}": v for k, v in sorted(counters.items())})
        level, message = OK, "scoring"
        if last is None:
            level, message = WARN, "no window scored yet (waiting for input)"
        elif last.status != STATUS_OK:
            level, message = WARN, f"{STATUS_NAMES.get(last.status, '?')}: {last.status_message}"
        if stale:
            level, message = WARN, f"{message}; stale: {', '.join(stale)}"
        if dropped or lost or self.rejected:
            level = max(level, WARN)
            message += f"; {dropped} dropped, {lost} lost in transport, {self.rejected} rejected messages"
        now = self.get_clock().now().nanoseconds * 1e-9
        if self.resets and now - self._last_reset_clock < RESET_NOTICE_S:
            level, message = max(level, WARN), f"{message}; {self.last_reset_reason}"
        if self.last_reset_reason:
            values["last_reset_reason"] = self.last_reset_reason
        if self.processing_errors:
            level, message = ERROR, f"{message}; processing errors: {self.last_processing_error}"
            values["processing_errors"] = self.processing_errors
        return Health(level, message, values)


def main(args: list[str] | None = None) -> int:
    """Entry point of the installed ``timeseries_anomaly_node`` executable."""
    return run_node(lambda: TimeseriesAnomalyNode(), args, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
