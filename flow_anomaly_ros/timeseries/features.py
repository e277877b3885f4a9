"""Window features: per-signal statistics, cross-signal consistency residuals and CAN timing.

For a window of ``n`` hold-last samples per signal (SI units) the features are:

- per signal: ``mean``, ``log_std`` (log of the standard deviation, floored at the signal's ``eps``) and
  ``log_diff_rms`` (log RMS of the first difference: spikes, noise bursts and stuck values move it by orders of
  magnitude, which the log keeps on a scale a density model can learn);
- per consistency check (redundant measurements of one motion, e.g. IMU yaw rate vs CAN yaw rate vs wheel-speed
  difference, IMU forward acceleration vs d(speed)/dt): the residual's ``mean`` and ``rms``;
- CAN timing per tracked message: ``rate`` (frames in the window / frames expected from the period) and
  ``log_max_gap`` (longest silence / period, including the gap from the previous frame), plus
  ``can.unknown_ids:log_count``, ``can.error_frames:log_count`` and ``can.bus:load`` (all frames / expected).
  These make floods, fuzzing, injected or replayed frames and suspended messages visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flow_anomaly_ros.timeseries.signals import ConsistencySpec, PipelineConfig, message_period_s


@dataclass(frozen=True)
class CanTiming:
    """Timing inputs of one window: per tracked message its frame stamps in the window and the previous stamp."""

    stamps: list[np.ndarray]
    previous: list[float | None]
    unknown_count: int
    error_count: int
    total_count: int


class FeatureLayout:
    """Names and computation of the window feature vector for a :class:`PipelineConfig`."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.index = {name: i for i, name in enumerate(config.signal_names)}
        self.eps = np.array([s.eps for s in config.signals])
        self.periods = [message_period_s(config, m) for m in config.can_messages] if config.can_timing else []
        names: list[str] = []
        for s in config.signals:
            names += [f"{s.name}:mean", f"{s.name}:log_std", f"{s.name}:log_diff_rms"]
        for c in config.consistency:
            names += [f"{c.name}:mean", f"{c.name}:rms"]
        if config.can_timing:
            for m in config.can_messages:
                names += [f"can.{m}:rate", f"can.{m}:log_max_gap"]
            names += ["can.unknown_ids:log_count", "can.error_frames:log_count", "can.bus:load"]
        self.names = names
        self.expected_total = config.window_s * sum(1.0 / p for p in self.periods) if self.periods else 1.0
        self.signal_dim = 3 * len(config.signals) + 2 * len(config.consistency)  # features from resampled values

    @property
    def dim(self) -> int:
        return len(self.names)

    def feature_signal(self) -> list[str]:
        """The input each feature comes from (signal, consistency check or CAN message), for attribution."""
        return [n.rsplit(":", 1)[0] for n in self.names]

    def assemble(
        self, signal_features: np.ndarray, timing: CanTiming | None, start_s: float, end_s: float
    ) -> np.ndarray:
        """Feature vector of the window ``[start_s, end_s)`` from its :meth:`signal_features` (computed now or ahead
        of the window's end) and its CAN timing."""
        out = np.empty(self.dim, dtype=np.float64)
        out[: self.signal_dim] = signal_features
        self._fill_timing_features(out, timing, start_s, end_s)
        return out

    def signal_features(self, values: np.ndarray) -> np.ndarray:
        """The first ``signal_dim`` features: per-signal statistics and consistency residuals of the resampled
        ``values`` ((n_signals, n_ticks) in SI units, finite). They depend on the values at the window's ticks only,
        so they can be computed as soon as those are final, before the window's end (``WindowFeaturizer.prepare``)."""
        cfg = self.config
        dt = 1.0 / cfg.rate_hz
        out = np.empty(self.signal_dim, dtype=np.float64)
        n_sig, n = values.shape
        # Spelled out with the ufuncs that ndarray.mean / std and np.diff run inside (add.reduce / n, then the
        # squared deviations from that mean): bit-identical values with a third of the calls, on the latency path.
        mean = np.add.reduce(values, axis=1) / n
        dev = values - mean[:, None]
        std = np.sqrt(np.add.reduce(dev * dev, axis=1) / n)
        diff = values[:, 1:] - values[:, :-1]
        diff_rms = np.sqrt(np.add.reduce(diff * diff, axis=1) / (n - 1))
        out[0 : 3 * n_sig : 3] = mean
        out[1 : 3 * n_sig : 3] = np.log(np.maximum(std, self.eps))
        out[2 : 3 * n_sig : 3] = np.log(np.maximum(diff_rms, self.eps))
        k = 3 * n_sig
        if cfg.consistency:
            # All residuals reduced in one call per statistic (this runs for every window on the node's latency
            # path). A row-wise add.reduce / n is what ndarray.mean does per row, so the values are bit-identical
            # to reducing each residual on its own.
            residuals = np.empty((len(cfg.consistency), values.shape[1]))
            for j, c in enumerate(cfg.consistency):
                residuals[j] = self._residual(c, values, dt)
            n = residuals.shape[1]
            n_c = len(cfg.consistency)
            out[k : k + 2 * n_c : 2] = np.add.reduce(residuals, axis=1) / n
            out[k + 1 : k + 2 * n_c : 2] = np.sqrt(np.add.reduce(residuals * residuals, axis=1) / n)
        return out

    def _fill_timing_features(self, out: np.ndarray, timing: CanTiming | None, start_s: float, end_s: float) -> None:
        """The CAN timing features (after ``signal_dim``) of the window ``[start_s, end_s)`` into ``out``."""
        cfg = self.config
        k = self.signal_dim
        if cfg.can_timing:
            if timing is None:
                raise ValueError("CAN timing features configured but no timing given")
            for stamps, prev, period in zip(timing.stamps, timing.previous, self.periods):
                out[k] = len(stamps) / (cfg.window_s / period)
                out[k + 1] = math.log(max(_max_gap(stamps, prev, start_s, end_s), period) / period)
                k += 2
            out[k] = math.log1p(timing.unknown_count)
            out[k + 1] = math.log1p(timing.error_count)
            out[k + 2] = timing.total_count / self.expected_total

    def _residual(self, c: ConsistencySpec, values: np.ndarray, dt: float) -> np.ndarray:
        a = values[self.index[c.a]]
        if c.kind == "difference":
            return a - values[self.index[c.b]]
        if c.kind == "derivative":
            b = values[self.index[c.b]]
            slope = (b[-1] - b[0]) / (dt * (len(b) - 1))
            return a - slope
        if c.kind == "wheel_yaw":
            return a - (values[self.index[c.right]] - values[self.index[c.left]]) / c.track_m
        if c.kind == "steer_yaw":
            speed = values[self.index[c.speed]]
            steer = values[self.index[c.steer]] / c.steer_ratio
            return a - speed * np.tan(steer) / c.wheelbase_m
        raise ValueError(f"unknown consistency kind {c.kind!r}")


def _max_gap(stamps: np.ndarray, prev: float | None, start: float, end: float) -> float:
    """Longest interval without a frame inside the window (from the previous frame, or the window start)."""
    first = prev if prev is not None else start
    if len(stamps) == 0:
        return end - first
    inner = float((stamps[1:] - stamps[:-1]).max()) if len(stamps) > 1 else 0.0  # np.diff without its overhead
    return max(inner, float(stamps[0]) - first, end - float(stamps[-1]))
