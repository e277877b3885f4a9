"""Input subscriptions taken on a thread of their own instead of by the rclpy executor (why: it is 5x cheaper).

rclpy's Python executors handle every message as a task: they rebuild the wait set from every entity of the node,
create a coroutine, trigger and re-wait on a guard condition. Measured on this 2-vCPU machine with ~1,000
``can_msgs/Frame``/s and a callback that does nothing, that costs ~650 µs of CPU per message (the whole subscriber
process at ~65 % of a core); the executor then competes for the GIL with the node's scoring thread, which was most
of the node's p99 latency (docs/timeseries_node.md). An :class:`InputPump` waits on just its own subscriptions
and a guard condition, then takes each subscription's whole backlog with the same ``take_message`` call the executor
uses: ~80 µs per message in the thread, and with serialized (``raw``) CAN frames decoded by ``struct`` less.

The subscriptions are ordinary ones of the node (they show in ``ros2 node info``, QoS and remapping apply) in a
callback group that executors never run, so only the pump takes from them. The wait set is rclpy's own C binding
(``rclpy_implementation.WaitSet``, the class every rclpy executor builds on, same signature from Humble to Kilted);
where it is missing or differs, :func:`pump_available` says why and the node falls back to executor callbacks.
``rclpy.experimental.EventsExecutor`` was measured too (~270 µs/message) but cannot pass a ``MessageInfo`` to a
callback in Kilted (``SystemError``), and the node needs the middleware's receive time and sequence numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.guard_condition import GuardCondition

Handler = Callable[[Any, dict[str, Any]], None]
WAIT_NS = 50_000_000  # wake at least this often to notice stop() and a context shut down


class NeverByExecutor(CallbackGroup):
    """A callback group no executor runs: an executor skips entities whose group says it cannot execute them."""

    def can_execute(self, entity: Any) -> bool:
        return False

    def beginning_execution(self, entity: Any) -> bool:
        return False

    def ending_execution(self, entity: Any) -> None:
        pass


def pump_available() -> str | None:
    """None when this rclpy has the wait-set binding the pump needs, else why not."""
    try:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        _rclpy.WaitSet  # noqa: B018 - the attribute is what is checked
    except (ImportError, AttributeError) as exc:
        return f"this rclpy has no usable wait-set binding ({type(exc).__name__}: {exc})"
    return None


class InputPump:
    """Takes messages of its subscriptions on one thread and hands each to its handler, in arrival order per topic.

    ``before_take`` runs before each round of takes (a node that scores on another thread parks the pump there
    while it scores a window); ``after_round`` after each round, and at least every 50 ms (a node that scores on
    this thread does it there: no hand-over between threads, no contention for the GIL); ``batch_s`` > 0 sleeps
    that long after a wake-up so that a burst is taken at once; ``drain_max`` bounds what one subscription gives per
    round so that one flooded topic cannot starve the others. A handler's exception goes to ``on_error`` and never
    stops the pump. A subscription's ``on_drained(backlogged)`` runs after each of its drains, in order with its
    handler calls: ``backlogged`` is True when the drain stopped at ``drain_max`` with messages still waiting, so a
    consumer can tell a topic that is behind (its messages wait in the middleware) from one that is silent.
    """

    def __init__(
        self,
        node: Any,
        on_error: Callable[[BaseException], None],
        before_take: Callable[[], None] | None = None,
        after_round: Callable[[], None] | None = None,
        batch_s: float = 0.0,
        drain_max: int = 256,
        name: str = "input_pump",
    ) -> None:
        self._node = node
        self._on_error = on_error
        self._before_take = before_take or (lambda: None)
        self._after_round = after_round or (lambda: None)
        self._batch_s = batch_s
        self._drain_max = drain_max
        self._name = name
        self._group = NeverByExecutor()
        self._subs: list[tuple[Any, Handler, Callable[[bool], None] | None]] = []
        self._stop = threading.Event()
        self._wake = GuardCondition(None, self._group, context=node.context)
        self._thread: threading.Thread | None = None
        self.taken = 0  # messages handed to handlers
        self.wakeups = 0

    def subscribe(
        self,
        msg_type: Any,
        topic: str,
        handler: Handler,
        qos: Any,
        raw: bool = False,
        on_drained: Callable[[bool], None] | None = None,
    ) -> Any:
        """A subscription of the node taken by this pump; ``raw`` hands the handler the serialized bytes."""
        if self._thread is not None:
            raise RuntimeError("subscribe before start()")
        sub = self._node.create_subscription(msg_type, topic, lambda *_: None, qos, callback_group=self._group, raw=raw)
        self._subs.append((sub, handler, on_drained))
        return sub

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and destroy the subscriptions (idempotent)."""
        self._stop.set()
        with suppress(Exception):  # already destroyed with the context
            self._wake.trigger()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        for sub, *_ in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []

    def _run(self) -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        context = self._node.context
        try:
            with ExitStack() as stack:  # the handles stay valid (not destroyed under us) while the thread runs
                stack.enter_context(context.handle)
                for sub, *_ in self._subs:
                    stack.enter_context(sub.handle)
                stack.enter_context(self._wake.handle)
                wait_set = _rclpy.WaitSet(len(self._subs), 1, 0, 0, 0, 0, context.handle)
                takers = [(sub.handle, sub.msg_type, sub.raw, h, drained) for sub, h, drained in self._subs]
                while not self._stop.is_set() and context.ok():
                    wait_set.clear_entities()
                    for handle, *_ in takers:
                        wait_set.add_subscription(handle)
                    wait_set.add_guard_condition(self._wake.handle)
                    wait_set.wait(WAIT_NS)
                    if self._stop.is_set():
                        break
                    self.wakeups += 1
                    self._before_take()
                    if self._batch_s > 0:
                        time.sleep(self._batch_s)
                    for taker in takers:
                        self._drain(*taker)
                    self._after_round()
        except Exception as exc:  # the context went away under us (shutdown) or the binding misbehaved
            if context.ok() and not self._stop.is_set():
                self._on_error(exc)

    def _drain(
        self, handle: Any, msg_type: Any, raw: bool, handler: Handler, on_drained: Callable[[bool], None] | None
    ) -> None:
        backlogged = True
        for _ in range(self._drain_max):
            taken = handle.take_message(msg_type, raw)
            if taken is None:
                backlogged = False
                break
            self.taken += 1
            try:
                handler(*taken)
            except Exception as exc:
                self._on_error(exc)
        if on_drained is not None:
            try:
                on_drained(backlogged)
            except Exception as exc:
                self._on_error(exc)


def draining_subscription(
    node: Any,
    msg_type: Any,
    topic: str,
    handler: Handler,
    qos: Any,
    raw: bool = False,
    before_take: Callable[[], None] | None = None,
    batch_s: float = 0.0,
    drain_max: int = 256,
) -> Any:
    """(Without a pump) an executor subscription whose callback also takes what else is queued for it (up to
    ``drain_max``), after ``before_take`` and, if ``batch_s`` > 0, a sleep that lets a burst gather.

    rclpy's executor rebuilds its wait set (every service, timer and event of the node) for each message it takes,
    which costs several times more than handling a CAN frame; taking a topic's backlog in one go cuts that to once
    per burst. Uses the same take call as rclpy's executor; where it is unavailable the executor simply delivers
    the rest one by one.
    """
    holder: list[Any] = []
    before = before_take or (lambda: None)

    def callback(msg: Any, info: Any) -> None:
        before()
        handler(msg, info)
        if batch_s > 0:
            time.sleep(batch_s)
        sub = holder[0]
        for _ in range(drain_max):
            try:
                with sub.handle:
                    taken = sub.handle.take_message(sub.msg_type, sub.raw)
            except Exception:  # destroyed meanwhile, or an rclpy without this call
                return
            if taken is None:
                return
            handler(*taken)

    sub = node.create_subscription(msg_type, topic, callback, qos, raw=raw)
    holder.append(sub)
    return sub
