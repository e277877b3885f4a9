"""Small streaming statistics shared by nodes and benchmarks (ROS-free)."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class LatencyWindow:
    """Keeps the last ``size`` latency samples (seconds) and reports percentiles in milliseconds."""

    def __init__(self, size: int = 1000) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(float(seconds))

    def __len__(self) -> int:
        return len(self._samples)

    def copy(self) -> LatencyWindow:
        """A copy (cheap), so that percentiles can be computed outside the lock that guards this window."""
        out = LatencyWindow(self._samples.maxlen or 1)
        out._samples = self._samples.copy()
        return out

    def percentile_ms(self, q: float) -> float:
        if not self._samples:
            return float("nan")
        return float(np.percentile(np.fromiter(self._samples, float), q) * 1e3)

    def summary_ms(self) -> dict[str, float]:
        return {"p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99), "count": float(len(self))}


class RateMeter:
    """Message rate over a sliding time window (monotonic clock), for diagnostics."""

    def __init__(self, horizon_s: float = 5.0) -> None:
        self.horizon_s = horizon_s
        self._stamps: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._stamps.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._stamps and now - self._stamps[0] > self.horizon_s:
            self._stamps.popleft()

    def rate_hz(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._stamps) < 2:
            return 0.0
        span = self._stamps[-1] - self._stamps[0]
        return (len(self._stamps) - 1) / span if span > 0 else 0.0
