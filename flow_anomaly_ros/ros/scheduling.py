"""Where and how a node's threads run: CPU pinning (``cpu_affinity``) and real-time priority (``thread_priority``).

Both apply to every thread of the process (executor, input, scoring and the middleware's own threads), because
they share the GIL: a thread left behind on another CPU or at normal priority stalls the others while it holds it.
Threads started later inherit the setting from the thread that starts them.

Why (measured, bench/results/timeseries_node.md and docs/timeseries_node.md): the window's work is ~1 ms when its
code and data are in the CPU's caches and several times that when they are not, and a thread the kernel moves
between CPUs finds them cold on the other one; a normal-priority thread that becomes runnable on a busy CPU also
waits for whole scheduler slices. On this 2-vCPU VM, at ~1,000 messages/s, the p99 score latency was 2.8-4.9 ms in
all five runs with both settings, and 3.0-9.2 ms from run to run with either alone or neither. On a vehicle
computer: the node on a core of its own (``isolcpus``, a cpuset) with both settings.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any


def _task_ids() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


def available_cpus() -> set[int]:
    """The CPUs this process may run on (its current affinity; all CPUs where affinity is not supported)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def cpu_list_problem(value: Sequence[int]) -> str | None:
    """Why ``value`` is not a usable CPU list (None if it is): a list of distinct CPU numbers this process may use."""
    if any(isinstance(c, bool) or not isinstance(c, int) for c in value):
        return "must be a list of CPU numbers (integers)"
    if len(set(value)) != len(value):
        return "lists a CPU twice"
    allowed = available_cpus()
    outside = sorted(set(value) - allowed)
    if outside:
        return f"CPU(s) {outside} not available to this process (available: {sorted(allowed)})"
    return None


def pin_threads(cpus: Sequence[int]) -> str:
    """Pin every thread of this process to ``cpus``; returns what happened, for diagnostics (never raises)."""
    try:
        tids = _task_ids()
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, set(cpus))
    except (OSError, AttributeError) as exc:  # no /proc, not Linux, or the CPUs are outside our cpuset
        return f"refused ({type(exc).__name__}: {exc}); threads run on any CPU"
    return f"CPU {','.join(str(c) for c in sorted(cpus))} ({len(tids)} threads)"


def set_realtime(priority: int) -> str:
    """Put every thread of this process under SCHED_FIFO ``priority``; returns what happened (never raises).

    On a loaded machine a normal-priority thread waits for a CPU for whole scheduler slices (several ms), which is
    most of the latency tail there. Needs CAP_SYS_NICE or an rtprio limit (``ulimit -r``); without them the node
    warns and runs with normal scheduling.
    """
    try:
        tids = _task_ids()
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:  # PermissionError, no /proc, or not Linux
        return f"refused ({type(exc).__name__}: {exc}); normal scheduling"
    return f"SCHED_FIFO {priority} ({len(tids)} threads)"


def apply_scheduling(cpus: Sequence[int], priority: int, logger: Any) -> tuple[str, str]:
    """Pin this process's threads to ``cpus`` (if any), then SCHED_FIFO ``priority`` (if > 0); logs what happened
    (a warning when refused) and returns ``(cpu_affinity, realtime)`` for diagnostics ("off" where not asked)."""
    affinity = realtime = "off"
    if cpus:
        affinity = pin_threads(cpus)
        if affinity.startswith("refused"):
            logger.warn(f"cpu_affinity={list(cpus)}: {affinity}")
        else:
            logger.info(f"threads pinned to {affinity}")
    if priority > 0:
        realtime = set_realtime(priority)
        if realtime.startswith("refused"):
            logger.warn(f"thread_priority={priority}: {realtime}")
        else:
            logger.info(f"threads now {realtime}")
    return affinity, realtime
