"""Helpers for tests that talk to real ROS 2 processes (no mocks): subprocess launching and spinning."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ros_env(**extra: str) -> dict[str, str]:
    """The test session's environment (domain id, localhost discovery, log dir) plus ``extra``."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_python(args: Sequence[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start ``python ARGS`` with the venv interpreter in its own process group; output captured."""
    return subprocess.Popen(
        [sys.executable, *args],
        env=env or ros_env(),
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10.0) -> str:
    """Stop a process started by ``start_python`` and return its combined output."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out or ""


def spin_until(node, predicate: Callable[[], bool], timeout: float = 15.0, step: float = 0.05) -> bool:
    """Spin ``node``'s test executor until ``predicate()`` is true or ``timeout`` seconds pass."""
    executor = node.executor_for_test
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step)
    return predicate()
