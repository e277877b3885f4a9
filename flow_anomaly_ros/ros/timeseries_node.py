"""``timeseries_anomaly_node``: live CAN/IMU anomaly scoring on the vehicle (thin shell around the core).

Subscribes to ``sensor_msgs/Imu`` topics and to ``can_msgs/msg/Frame`` on ``from_can_bus`` (ros2_socketcan), and
publishes one ``flow_anomaly_ros/msg/AnomalyScore`` per window on ``~/score`` (optionally the bare value on
``~/score_value``), the per-feature contributions of anomalous windows right after on ``~/explanation`` (a flag does
not wait for its why), plus health on ``/diagnostics``. The node owns no algorithm: it converts messages to events,
puts them on a :class:`~flow_anomaly_ros.timeseries.bounded_queue.BoundedQueue` (full: dropped and counted) and
hands them to :class:`~flow_anomaly_ros.timeseries.live_scoring.LiveScoring` (watermark over the input topics,
clock-jump reset, windows over drops or transport losses INVALID_INPUT, silent inputs advanced to STALE_INPUT; the
same code scores recordings offline, so live and offline scores are identical). Health is built by
:mod:`flow_anomaly_ros.timeseries.live_diagnostics`.

Wiring, and why (measured, docs/timeseries_node.md):
- Lifecycle node from :class:`ManagedAnomalyNode`: configure loads and checks the model (missing, corrupt or
  mismatched -> MODEL_ERROR on ``/diagnostics``, node stays up and retries), activate starts the subscriptions;
  ``autostart`` (default true) does both without a lifecycle manager.
- Input is taken by an :class:`~flow_anomaly_ros.ros.input_pump.InputPump` thread (~80 µs of CPU per message
  against ~650 µs for the rclpy executor) and scored on that thread after each round of takes; CAN frames arrive
  serialized and are read with ``struct``. ``input_thread:=false`` goes back to executor callbacks.
- Time is message time (header stamps), so bags replay correctly with or without ``use_sim_time``; silence is
  measured on the node clock. Latency counts from the middleware's receive time. Configure warms the model up and
  freezes the loaded objects out of the garbage collector; ``cpu_affinity`` / ``thread_priority`` pin the threads
  and put them under SCHED_FIFO (:mod:`flow_anomaly_ros.ros.scheduling`).

Example::

    python -m flow_anomaly_ros.ros.timeseries_node --ros-args -p model_dir:=models/ts_realnvp \\
        -p imu_topics:="['/imu/data']" -p can_topic:=/from_can_bus
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from std_msgs.msg import Float32

from flow_anomaly_ros import streams
from flow_anomaly_ros.msg import AnomalyScore
from flow_anomaly_ros.ros.can_conversion import CanTypeMissing, can_event_from_cdr, frame_type
from flow_anomaly_ros.ros.diagnostics import ERROR, Health
from flow_anomaly_ros.ros.imu_conversion import imu_event, seconds_to_stamp
from flow_anomaly_ros.ros.input_pump import InputPump, draining_subscription, pump_available
from flow_anomaly_ros.ros.managed_node import ManagedAnomalyNode, run_node
from flow_anomaly_ros.ros.qos import qos_from_name
from flow_anomaly_ros.ros.scheduling import apply_scheduling
from flow_anomaly_ros.ros.timeseries_params import PARAMS, param_problems, stream_topics
from flow_anomaly_ros.timeseries.bounded_queue import BoundedQueue
from flow_anomaly_ros.timeseries.live_diagnostics import LiveCounters, live_health
from flow_anomaly_ros.timeseries.live_model import ModelError, load_live_scorer
from flow_anomaly_ros.timeseries.live_scoring import BACKLOG, LiveScoring
from flow_anomaly_ros.timeseries.status import INVALID_INPUT as STATUS_INVALID_INPUT  # noqa: F401  (see test_ts_status)
from flow_anomaly_ros.timeseries.status import OK as STATUS_OK
from flow_anomaly_ros.timeseries.status import STATUS_NAMES  # noqa: F401  (see test_ts_status)

NODE_NAME = "timeseries_anomaly_node"
DRAIN_MAX = 256  # messages a subscription takes from its backlog in one round


class TimeseriesAnomalyNode(ManagedAnomalyNode):
    """Scores sliding windows of IMU and CAN input with a trained time-series detector."""

    PARAMS = PARAMS

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        self.scorer = None
        self.live: LiveScoring | None = None
        self.counters = LiveCounters()
        self._score_pub = self._value_pub = self._explanation_pub = None
        self._subs: list[Any] = []
        self._pump: InputPump | None = None
        self.input_path = "none"  # how input messages are taken (input_thread), named on /diagnostics
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue = BoundedQueue(1)
        self.model_error: str | None = None
        self.realtime = "off"  # scheduling of the node's threads (thread_priority), named on /diagnostics
        self.cpu_affinity = "off"  # where they run (cpu_affinity), named on /diagnostics
        super().__init__(node_name, **kwargs)
        self._frame_cls, self._frame_missing = None, None
        try:
            self._frame_cls = frame_type()
        except CanTypeMissing as exc:
            self.get_logger().error(str(exc))
            self._frame_missing = str(exc)

    def _clock_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ----- lifecycle ---------------------------------------------------------------------------------------------
    def validate_params(self, values: dict[str, Any]) -> list[str]:
        return param_problems(values, self._frame_missing)

    def configure_core(self, params: dict[str, Any]) -> None:
        self.model_error = None
        try:
            self.scorer = load_live_scorer(params["model_dir"], params["imu_sources"], params["dbc_file"],
                                           bool(params["can_topic"]), params["contributions"])  # fmt: skip
            topics = stream_topics(params["stream_topics"])
            missing = [s for s in self.scorer.config.streams if s not in ("imu", "can", *topics)]
            if missing:
                raise ModelError(f"model reads stream(s) {missing}; give their topics in stream_topics (NAME=TOPIC)")
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

    def activate_core(self) -> None:
        params = self.params
        self.counters = LiveCounters()
        self._queue = BoundedQueue(params["queue_size"])
        # registry streams the model reads (GNSS ...), by name: their topic, subscribed with the stream's type
        extra = {n: t for n, t in stream_topics(params["stream_topics"]).items() if n in self.scorer.config.streams}
        self.live = LiveScoring(
            self.scorer,
            list(params["imu_sources"]) + (["can"] if params["can_topic"] else []) + list(extra),
            self._emit,
            clock_jump_back_s=params["clock_jump_back_s"],
            max_input_wait_s=params["max_input_wait_s"],
            input_timeout_s=params["input_timeout_s"],
            clock=self._clock_s,
            on_reset=self._on_reset,
            on_reject=self.counters.reject,
        )
        self._stop.clear()
        from sensor_msgs.msg import Imu

        in_qos = qos_from_name(params["input_qos"], params["input_qos_depth"] or None)
        unavailable = pump_available() if params["input_thread"] else "input_thread is false"
        if unavailable is None:
            self._pump = InputPump(self, on_error=self._input_error, after_round=self._score_queued,
                                   batch_s=params["input_batch_s"], drain_max=DRAIN_MAX, name="ts_input")  # fmt: skip
            pump = self._pump

            def subscribe(
                msg_type: Any, topic: str, handler: Any, qos: Any, raw: bool = False, source: str = ""
            ) -> Any:
                # In order with the topic's events, whenever it changes: whether messages of the topic still wait
                # in the middleware after a drain (the watermark waits for a backlogged topic, see LiveScoring).
                last = [False]

                def on_drained(backlogged: bool) -> None:
                    if backlogged != last[0] and self._queue.put((0.0, BACKLOG, source, backlogged)):
                        last[0] = backlogged

                return pump.subscribe(msg_type, topic, handler, qos, raw, on_drained=on_drained)

            self.input_path = "input thread"
        else:
            self.input_path = f"executor callbacks ({unavailable})"
            if params["input_thread"]:
                self.get_logger().warn(f"input_thread: {unavailable}; taking input in executor callbacks")

            def subscribe(
                msg_type: Any, topic: str, handler: Any, qos: Any, raw: bool = False, source: str = ""
            ) -> Any:
                return draining_subscription(self, msg_type, topic, handler, qos, raw, self.live.wait_for_scoring,
                                             params["input_batch_s"], DRAIN_MAX)  # fmt: skip

        for topic, source in zip(params["imu_topics"], params["imu_sources"]):
            self._subs.append(subscribe(Imu, topic, self._imu_callback(source), in_qos, source=source))
        if params["can_topic"]:  # serialized: decoded by can_event_from_cdr (see can_conversion)
            self._subs.append(subscribe(self._frame_cls, params["can_topic"], self._on_can, in_qos, True, "can"))
        for name, topic in extra.items():
            msg_type = streams.get(name).ros_type()
            self._subs.append(subscribe(msg_type, topic, self._stream_callback(name), in_qos, source=name))
        if self._pump is not None:
            self._pump.start()
        else:
            self._worker = threading.Thread(target=self._work, name="ts_scoring", daemon=True)
            self._worker.start()
        self.cpu_affinity, self.realtime = apply_scheduling(
            params["cpu_affinity"], params["thread_priority"], self.get_logger()
        )

    def _input_error(self, exc: BaseException) -> None:
        """A message the input thread could not hand over (or the thread itself failing): counted, on diagnostics."""
        self.counters.error(f"input: {type(exc).__name__}: {exc}")
        self.get_logger().error(self.counters.last_processing_error)

    def _stop_threads(self) -> bool:
        """Stop taking input and the scoring thread; True if there was a scoring thread."""
        if self._pump is not None:
            self._pump.stop()  # also destroys its subscriptions
            self._pump = None
        else:
            for sub in self._subs:
                self.destroy_subscription(sub)
        self._subs = []
        self.input_path = "none"
        self._stop.set()
        self._queue.wake()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.join(timeout=5.0)
        return worker is not None

    def deactivate_core(self) -> None:
        if self._stop_threads() and self.scorer is not None:  # nothing before a deactivation leaks into after it
            self.scorer.reset("deactivated")

    def destroy_node(self) -> None:
        """Stop the threads before the node goes (run_node destroys nodes without a lifecycle shutdown)."""
        self._stop_threads()
        super().destroy_node()

    def cleanup_core(self) -> None:
        for pub in (self._score_pub, self._value_pub, self._explanation_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._score_pub = self._value_pub = self._explanation_pub = None
        self.scorer = None

    # ----- input: convert and enqueue, nothing else ------------------------------------------------------------------
    def _stamp_override(self) -> float | None:
        return self._clock_s() if self.params["stamp_source"] == "receipt" else None

    def _receipt(self, source: str, stamp: float, info: dict[str, Any]) -> float:
        """Wall time the middleware received the message (so latency includes waiting to be taken); counts the
        messages lost in transport before it (gaps in its publisher's sequence numbers)."""
        gid = info.get("publisher_gid")
        lost = self.live.gaps.check(source, stamp, info.get("publication_sequence_number"),
                                    bytes(gid["data"]) if gid else None)  # fmt: skip
        if lost:
            self.counters.lost_in_transport[source] += lost
        received_ns = info.get("received_timestamp") or 0
        return received_ns * 1e-9 if received_ns > 0 else time.time()

    def _imu_callback(self, source: str) -> Any:
        def on_imu(msg: Any, info: dict[str, Any]) -> None:
            event = imu_event(msg, self._stamp_override())
            t_recv = self._receipt(source, event[0], info)
            self.counters.received[source] += 1
            if not self._queue.put((t_recv, "imu", source, event)):
                self.live.drops.note(event[0])

        return on_imu

    def _stream_callback(self, name: str) -> Any:
        """A registry stream's messages (GNSS ...) through its conversion, as ``(stamp, values)`` events."""
        kind = streams.get(name)

        def on_message(msg: Any, info: dict[str, Any]) -> None:
            try:
                event = kind.event(msg, self._stamp_override())
            except (AttributeError, TypeError, ValueError) as exc:
                self.counters.received[name] += 1
                self.counters.reject(f"{name}: {exc}")
                return
            t_recv = self._receipt(name, event[0], info)
            self.counters.received[name] += 1
            if not self._queue.put((t_recv, name, name, event)):
                self.live.drops.note(event[0])

        return on_message

    def _on_can(self, raw: bytes, info: dict[str, Any]) -> None:
        counters = self.counters
        try:
            event, is_rtr = can_event_from_cdr(raw, self._frame_cls, self._stamp_override())
        except ValueError as exc:
            counters.received["can"] += 1
            counters.reject(f"can: {exc}")
            return
        t_recv = self._receipt("can", event[0], info)
        counters.received["can"] += 1
        counters.received_can_id[event[1]] += 1
        if is_rtr:
            counters.reject("can: remote (RTR) frame carries no data")
            return
        if not self._queue.put((t_recv, "can", "can", event)):
            self.live.drops.note(event[0])

    # ----- scoring -----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        """(input_thread false) The scoring thread: input arrives in executor callbacks on another thread."""
        while not self._stop.is_set():
            self._score_queued(timeout=0.05)

    def _score_queued(self, timeout: float = 0.0) -> None:
        """Score what is queued (waiting up to ``timeout`` for it); with nothing queued, check for silent inputs."""
        batch = self._queue.take_all(timeout)
        try:
            if batch:
                self.live.process(batch)
            else:
                self.live.flush_when_quiet()
                self.live.advance_when_silent()
        except Exception as exc:  # never let one bad batch kill scoring; say so on diagnostics
            self.counters.error(f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"processing failed: {self.counters.last_processing_error}")

    def _on_reset(self, reason: str) -> None:
        self.counters.last_reset_clock = self._clock_s()
        self.get_logger().warn(reason)

    def _emit(self, results: list[Any], published: list[Any], t_trigger: float | None) -> None:
        """Publish the scores (latency: ``t_trigger`` -> published), then the contributions of the windows the
        ``contributions`` mode selects on ``~/explanation``: attribution costs ~4x the score (one model pass over
        d + 1 rows), and on the anomalous windows it was what set the p99 latency of the scores (measured,
        docs/timeseries_node.md)."""
        messages = [self._to_message(r) for r in published]
        for msg in messages:
            self._score_pub.publish(msg)
            if self._value_pub is not None:
                self._value_pub.publish(Float32(data=float(msg.score)))
            self.counters.published(msg.status, float(msg.score), msg.status_message, msg.is_anomaly)
        if t_trigger is not None:
            latency = self.live.latency
            with latency.lock:
                latency.score.add(time.time() - t_trigger)
        if self._explanation_pub is None:
            return
        self.scorer.explain(results)
        for result, msg in zip(results, messages):
            if not result.contributions or msg.status != STATUS_OK:  # not selected, or INVALID_INPUT by a drop
                continue
            msg.feature_names = list(result.feature_names)
            msg.feature_contributions = [float(c) for c in result.contributions]
            self._explanation_pub.publish(msg)
            self.counters.explanations_published += 1

    def _to_message(self, result: Any) -> AnomalyScore:
        msg = AnomalyScore()
        msg.header.stamp = seconds_to_stamp(result.end_s)
        msg.header.frame_id = self.params["frame_id"]
        msg.window_start = seconds_to_stamp(result.start_s)
        msg.source = self.scorer.model_id
        msg.score = float(result.score)
        msg.threshold = float(result.threshold)
        msg.is_anomaly = bool(result.is_anomaly)
        msg.status = int(result.status)
        msg.status_message = str(result.status_message)
        return msg

    # ----- diagnostics -----------------------------------------------------------------------------------------------
    def _diagnostics_items(self) -> Health | list[tuple[str, Health]]:
        if self.model_error is not None and self.config_error is not None:
            values = {"status": "MODEL_ERROR", "model_dir": self.get_parameter("model_dir").value}
            return Health(
                ERROR, f"MODEL_ERROR: {self.model_error}", {**values, "lifecycle_state": self.lifecycle_state}
            )
        return super()._diagnostics_items()

    def health(self) -> Health:
        extra = {"realtime": self.realtime, "cpu_affinity": self.cpu_affinity, "input_path": self.input_path}
        return live_health(self.live, self.counters, self._queue, self._clock_s(), extra)


def main(args: list[str] | None = None) -> int:
    """Entry point of the installed ``timeseries_anomaly_node`` executable."""
    return run_node(lambda: TimeseriesAnomalyNode(), args, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
