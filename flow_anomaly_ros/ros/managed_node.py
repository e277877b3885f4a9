"""Lifecycle (managed) node base shared by the anomaly nodes, in the style of ros2_socketcan.

What every node here needs and should spell the same way:
- parameters declared together from a table of :class:`Param` (default, description, allowed choices or range),
  validated at configure time with ONE error that lists every problem;
- ``autostart`` (default true): configure and activate without a lifecycle manager; if configuration fails (a model
  file missing or corrupt, a bad parameter) the node stays up, reports ERROR on ``/diagnostics`` and retries every
  ``retry_period_s`` seconds, so it recovers by itself once the file appears;
- ``/diagnostics`` publishing that starts in the constructor, so a node that cannot configure still says why;
- :func:`run_node`: init, spin (multi-threaded), clean shutdown on SIGINT/SIGTERM, exit code.

Subclasses implement ``configure_core(params)`` (load model, create publishers/subscriptions that belong to the
configured state), ``activate_core()``/``deactivate_core()``, ``cleanup_core()`` and ``health()``.
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from flow_anomaly_ros.ros.diagnostics import ERROR, OK, STEADY_CLOCK, WARN, DiagnosticsReporter, Health


class ParameterError(ValueError):
    """One or more node parameters are invalid; the message lists every problem."""


@dataclass(frozen=True)
class Param:
    """A node parameter: name, default (its type is the parameter's type), description and constraints."""

    name: str
    default: Any
    description: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem description or None
    read_only: bool = False

    def coerce(self, value: Any) -> Any:
        """An int given for a float parameter (``-p threshold:=1``) is that float, and an empty list (``-p x:=[]``,
        which rclpy reads as a parameter that is not set) is the empty list; other types stay as given."""
        if isinstance(self.default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(self.default, (list, tuple)) and value is None:
            return []
        return value

    def type_problem(self, value: Any) -> str | None:
        """Parameters are declared with dynamic typing (a wrong type must not kill the node at declaration, which
        is what rclpy does with a statically typed parameter); the type is checked here instead."""
        expected = type(self.default)
        if isinstance(self.default, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, expected)
        if ok:
            return None
        return f"{self.name}={value!r} has type {type(value).__name__}, expected {expected.__name__}"

    def problems(self, value: Any) -> list[str]:
        type_problem = self.type_problem(value)
        if type_problem:
            return [type_problem]
        out = []
        if self.choices is not None and value not in self.choices:
            out.append(f"{self.name}={value!r} is not one of {list(self.choices)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                out.append(f"{self.name}={value!r} must be finite")
            if self.min is not None and value < self.min:
                out.append(f"{self.name}={value!r} must be >= {self.min}")
            if self.max is not None and value > self.max:
                out.append(f"{self.name}={value!r} must be <= {self.max}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                out.append(f"{self.name}={value!r}: {problem}")
        return out


COMMON_PARAMS: tuple[Param, ...] = (
    Param("autostart", True, "configure and activate at start-up without a lifecycle manager"),
    Param("retry_period_s", 5.0, "with autostart, retry a failed configuration every N seconds (0 = never)", min=0.0),
    Param("diagnostics_period_s", 1.0, "period of /diagnostics publication", min=0.05, max=60.0),
)


TRANSITION_STATES = ("configuring", "activating", "deactivating", "cleaningup", "shuttingdown", "errorprocessing")


class ManagedAnomalyNode(LifecycleNode):
    """Base lifecycle node: parameter table, validation, autostart with retry, diagnostics."""

    PARAMS: tuple[Param, ...] = ()

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_table = {p.name: p for p in (*COMMON_PARAMS, *self.PARAMS)}
        for p in self._param_table.values():
            self.declare_parameter(
                p.name,
                p.default,
                ParameterDescriptor(description=p.description, read_only=p.read_only, dynamic_typing=True),
            )
        self.config_error: str | None = None
        self.progress: str | None = None  # what a running transition is doing (shown on /diagnostics meanwhile)
        self.params: dict[str, Any] = {}
        self.diagnostics = DiagnosticsReporter(
            self, self._diagnostics_items, period_s=self._early_param("diagnostics_period_s")
        )
        self._retry_timer = None
        if self._early_param("autostart"):
            # Deferred to the first spin so that subclasses finish their constructors first. Steady clock: with
            # use_sim_time the ROS clock stands still until /clock arrives, and start-up must not wait for a bag.
            self._start_timer = self.create_timer(0.0, self._autostart_once, clock=STEADY_CLOCK)

    # ----- parameters -------------------------------------------------------------------------------------------
    def _early_param(self, name: str) -> Any:
        """A parameter needed before validation (autostart, diagnostics period): its default when invalid, so that
        the node still starts and reports the problem on /diagnostics."""
        p = self._param_table[name]
        value = p.coerce(self.get_parameter(name).value)
        return p.default if p.problems(value) else value

    def read_params(self) -> dict[str, Any]:
        """Current parameter values, validated; raises ParameterError listing every problem."""
        values = {name: p.coerce(self.get_parameter(name).value) for name, p in self._param_table.items()}
        problems = [msg for name, p in self._param_table.items() for msg in p.problems(values[name])]
        problems += self.validate_params(values)
        if problems:
            raise ParameterError("invalid parameters: " + "; ".join(problems))
        return values

    def validate_params(self, values: dict[str, Any]) -> list[str]:
        """Cross-parameter checks for subclasses (return a list of problems)."""
        return []

    # ----- lifecycle ---------------------------------------------------------------------------------------------
    def _autostart_once(self) -> None:
        self.destroy_timer(self._start_timer)
        self._try_configure_and_activate()
        period = float(self.get_parameter("retry_period_s").value)
        if period > 0:
            self._retry_timer = self.create_timer(period, self._retry, clock=STEADY_CLOCK)

    def _retry(self) -> None:
        if self._state_machine.current_state[1] == "unconfigured":
            self.get_logger().info("retrying configuration")
            self._try_configure_and_activate()

    def _try_configure_and_activate(self) -> None:
        self.trigger_configure()
        if self._state_machine.current_state[1] == "inactive":
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = self.read_params()
            self.configure_core(self.params)
        except Exception as exc:  # any failure keeps the node alive, unconfigured, and says why
            self.config_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ParameterError) else str(exc)
            self.get_logger().error(f"configuration failed: {self.config_error}")
            try:
                self.cleanup_core()
            except Exception as cleanup_exc:
                self.get_logger().warn(f"cleanup after failed configuration: {cleanup_exc}")
            return TransitionCallbackReturn.FAILURE
        finally:
            self.progress = None
        self.config_error = None
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate_core()
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_core()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.cleanup_core()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.deactivate_core()
            self.cleanup_core()
        except Exception as exc:
            self.get_logger().warn(f"shutdown cleanup: {exc}")
        return TransitionCallbackReturn.SUCCESS

    @property
    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    # ----- diagnostics -------------------------------------------------------------------------------------------
    def _diagnostics_items(self) -> Health | list[tuple[str, Health]]:
        state = self.lifecycle_state
        if state in TRANSITION_STATES:  # published from the diagnostics callback group while the transition runs
            return Health(WARN, f"{state}: {self.progress or 'in progress'}", {"lifecycle_state": state})
        if self.config_error is not None:
            return Health(ERROR, f"not configured: {self.config_error}", {"lifecycle_state": self.lifecycle_state})
        if self.lifecycle_state != "active":
            return Health(
                OK if self.lifecycle_state == "inactive" else ERROR,
                f"lifecycle state {self.lifecycle_state}",
                {"lifecycle_state": self.lifecycle_state},
            )
        return self.health()

    # ----- for subclasses ----------------------------------------------------------------------------------------
    def configure_core(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def activate_core(self) -> None:
        pass

    def deactivate_core(self) -> None:
        pass

    def cleanup_core(self) -> None:
        pass

    def health(self) -> Health | list[tuple[str, Health]]:
        return Health(OK, "active")


def run_node(factory: Callable[[], Any], args: Sequence[str] | None = None, threads: int = 2) -> int:
    """Init rclpy, build the node(s), spin until SIGINT/SIGTERM, shut down cleanly; returns an exit code.

    ``threads=1`` spins a SingleThreadedExecutor (about twice the callback throughput of rclpy's multi-threaded one;
    right for nodes that do their heavy work in their own thread).
    """
    rclpy.init(args=list(args) if args is not None else sys.argv)
    executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
    nodes = []
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    try:
        made = factory()
        nodes = list(made) if isinstance(made, (list, tuple)) else [made]
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # rclpy's RCLError: SIGTERM shut the context down while the executor built a wait set
        if rclpy.ok():
            raise
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
