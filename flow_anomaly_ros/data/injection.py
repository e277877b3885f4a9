"""Seeded, labelled injection of IMU faults and CAN attacks at two severities ("clear" and "subtle").

The KITTI drive is normal driving, so every anomaly is injected here, by documented, seeded code, into an event
recording (:data:`flow_anomaly_ros.timeseries.events.EVENT_DTYPE`). Each injection returns a :class:`FaultInterval`
label (start, end, fault type, severity, target, magnitude).

Magnitudes are in units of ``sigma``, the standard deviation of the target signal's normal variation on the
*training* part of the drive (given by the caller): "clear" faults are large (5 sigma, or a long outage) and "subtle"
ones are about 1-2 sigma (1.5 sigma), or very short outages, as the issue asks.

IMU faults (one axis of accel/gyro, chosen at random):
  bias_jump    constant offset of clear 5 / subtle 1.5 sigma for 3 s
  stuck_axis   axis frozen at its value at fault start for 3 s
  drift        linear ramp from 0 to clear 5 / subtle 1.5 sigma over 3 s
  noise_burst  added white noise, std clear 3 / subtle 1 sigma, for 3 s
  dropout      IMU silent for clear 1.0 s / subtle 0.15 s (no samples at all)
  nan          every field NaN for clear 0.5 s / subtle 0.03 s (3 samples)
  spike        3 single-sample spikes of clear 8 / subtle 2 sigma within 1 s
  scale_error  axis multiplied by clear 1.5 / subtle 1.1 for 3 s
CAN attacks:
  dos_flood       highest-priority id 0x000, 8 zero bytes, clear 2000 / subtle 100 frames/s, 3 s
  fuzzing         random 11-bit ids, random DLC 0-8 and payloads, clear 500 / subtle 50 frames/s, 3 s
  spoof_speed     extra WHEEL_SPEEDS + SPEED frames (interleaved at the genuine rate) with speed offset by
                  clear 5 / subtle 1.5 sigma, 3 s
  spoof_steering  extra STEER_ANGLE_SENSOR frames with the angle offset by clear 5 / subtle 1.5 sigma, 3 s
  replay          frames recorded 30 s earlier (or as long ago as the recording allows, at least 3 s) re-sent
                  with shifted stamps: clear every tracked message, subtle one message, 3 s
  suspension      one periodic message (random) stops: clear 1.0 s / subtle 5 periods
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from flow_anomaly_ros.data.can_traffic import MPH, encode_frame
from flow_anomaly_ros.timeseries.events import EVENT_DTYPE, KIND_CAN, KIND_IMU, can_events
from flow_anomaly_ros.timeseries.signals import IMU_FIELDS, PipelineConfig, load_dbc, message_period_s

SEVERITIES = ("clear", "subtle")
IMU_FAULTS = ("bias_jump", "stuck_axis", "drift", "noise_burst", "dropout", "nan", "spike", "scale_error")
CAN_ATTACKS = ("dos_flood", "fuzzing", "spoof_speed", "spoof_steering", "replay", "suspension")
FAULT_TYPES = IMU_FAULTS + CAN_ATTACKS
CONTINUOUS_S = 3.0
REPLAY_AGE_S = 30.0

# magnitude per (fault, severity); see the module docstring for the units
MAGNITUDE = {
    "bias_jump": (5.0, 1.5),
    "drift": (5.0, 1.5),
    "noise_burst": (3.0, 1.0),
    "spike": (8.0, 2.0),
    "scale_error": (1.5, 1.1),
    "dropout": (1.0, 0.15),
    "nan": (0.5, 0.03),
    "dos_flood": (2000.0, 100.0),
    "fuzzing": (500.0, 50.0),
    "spoof_speed": (5.0, 1.5),
    "spoof_steering": (5.0, 1.5),
    "suspension": (1.0, 5.0),
    "stuck_axis": (1.0, 1.0),
    "replay": (1.0, 0.0),
}


@dataclass(frozen=True)
class FaultInterval:
    start_s: float
    end_s: float
    fault: str
    severity: str
    target: str
    magnitude: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fault_duration(fault: str, severity: str, config: PipelineConfig | None = None) -> float:
    """Length of the labelled interval of a fault (the suspension's subtle length depends on the message period)."""
    clear, subtle = MAGNITUDE[fault]
    mag = clear if severity == "clear" else subtle
    if fault in ("dropout", "nan"):
        return mag
    if fault == "spike":
        return 1.0
    if fault == "suspension":
        return mag if severity == "clear" else 0.5  # upper bound; the actual interval is 5 periods
    return CONTINUOUS_S


class Injector:
    """Applies faults to an event array. ``sigma`` maps IMU field / 'speed' (m/s) / 'steer' (deg) to their std."""

    def __init__(self, config: PipelineConfig, sigma: dict[str, float], rng: np.random.Generator) -> None:
        self.config = config
        self.sigma = sigma
        self.rng = rng
        self.db = load_dbc(config.dbc)

    # ------------------------------------------------------------------------------------------------------
    def inject(self, events: np.ndarray, fault: str, severity: str, start: float) -> tuple[np.ndarray, FaultInterval]:
        if fault not in FAULT_TYPES:
            raise ValueError(f"unknown fault {fault!r}; valid: {list(FAULT_TYPES)}")
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}; valid: {list(SEVERITIES)}")
        clear, subtle = MAGNITUDE[fault]
        mag = clear if severity == "clear" else subtle
        return getattr(self, f"_{fault}")(events.copy(), severity, start, mag)

    def _imu_rows(self, ev: np.ndarray, a: float, b: float) -> np.ndarray:
        return np.flatnonzero((ev["kind"] == KIND_IMU) & (ev["stamp"] >= a) & (ev["stamp"] < b))

    def _axis(self) -> tuple[str, str, int]:
        name = IMU_FIELDS[int(self.rng.integers(len(IMU_FIELDS)))]
        col = "accel" if name.startswith("accel") else "gyro"
        return name, col, "xyz".index(name[-1])

    def _label(self, a: float, b: float, fault: str, severity: str, target: str, mag: float) -> FaultInterval:
        return FaultInterval(float(a), float(b), fault, severity, target, float(mag))

    # --- IMU ------------------------------------------------------------------------------------------------
    def _bias_jump(self, ev, severity, start, mag):
        name, col, k = self._axis()
        end = start + CONTINUOUS_S
        rows = self._imu_rows(ev, start, end)
        sign = self.rng.choice([-1.0, 1.0])
        ev[col][rows, k] += sign * mag * self.sigma[name]
        return ev, self._label(start, end, "bias_jump", severity, f"imu.{name}", sign * mag)

    def _stuck_axis(self, ev, severity, start, mag):
        name, col, k = self._axis()
        end = start + CONTINUOUS_S
        rows = self._imu_rows(ev, start, end)
        if len(rows):
            ev[col][rows, k] = ev[col][rows[0], k]
        return ev, self._label(start, end, "stuck_axis", severity, f"imu.{name}", 0.0)

    def _drift(self, ev, severity, start, mag):
        name, col, k = self._axis()
        end = start + CONTINUOUS_S
        rows = self._imu_rows(ev, start, end)
        sign = self.rng.choice([-1.0, 1.0])
        ramp = (ev["stamp"][rows] - start) / CONTINUOUS_S
        ev[col][rows, k] += sign * mag * self.sigma[name] * ramp
        return ev, self._label(start, end, "drift", severity, f"imu.{name}", sign * mag)

    def _noise_burst(self, ev, severity, start, mag):
        name, col, k = self._axis()
        end = start + CONTINUOUS_S
        rows = self._imu_rows(ev, start, end)
        ev[col][rows, k] += mag * self.sigma[name] * self.rng.standard_normal(len(rows))
        return ev, self._label(start, end, "noise_burst", severity, f"imu.{name}", mag)

    def _dropout(self, ev, severity, start, mag):
        rows = self._imu_rows(ev, start, start + mag)
        return np.delete(ev, rows), self._label(start, start + mag, "dropout", severity, "imu", mag)

    def _nan(self, ev, severity, start, mag):
        rows = self._imu_rows(ev, start, start + mag)
        ev["accel"][rows] = np.nan
        ev["gyro"][rows] = np.nan
        return ev, self._label(start, start + mag, "nan", severity, "imu", mag)

    def _spike(self, ev, severity, start, mag):
        name, col, k = self._axis()
        rows = self._imu_rows(ev, start, start + 1.0)
        picks = np.sort(self.rng.choice(rows, size=min(3, len(rows)), replace=False))
        ev[col][picks, k] += self.rng.choice([-1.0, 1.0], size=len(picks)) * mag * self.sigma[name]
        a, b = float(ev["stamp"][picks[0]]), float(ev["stamp"][picks[-1]]) + 0.01
        return ev, self._label(a, b, "spike", severity, f"imu.{name}", mag)

    def _scale_error(self, ev, severity, start, mag):
        name, col, k = self._axis()
        end = start + CONTINUOUS_S
        rows = self._imu_rows(ev, start, end)
        if name == "accel_z":  # scale the deviation from gravity's share too: a real scale error scales it all
            pass
        ev[col][rows, k] *= mag
        return ev, self._label(start, end, "scale_error", severity, f"imu.{name}", mag)

    # --- CAN ------------------------------------------------------------------------------------------------
    def _add(self, ev: np.ndarray, extra: np.ndarray) -> np.ndarray:
        out = np.concatenate([ev, extra.astype(EVENT_DTYPE)])
        return out[np.argsort(out["stamp"], kind="stable")]

    def _dos_flood(self, ev, severity, start, mag):
        end = start + CONTINUOUS_S
        t = np.arange(start, end, 1.0 / mag)
        extra = can_events(t, np.zeros(len(t)), np.zeros((len(t), 8), np.uint8), np.full(len(t), 8))
        return self._add(ev, extra), self._label(start, end, "dos_flood", severity, "can.0x000", mag)

    def _fuzzing(self, ev, severity, start, mag):
        end = start + CONTINUOUS_S
        t = np.sort(self.rng.uniform(start, end, int(mag * CONTINUOUS_S)))
        ids = self.rng.integers(0, 0x800, len(t))
        data = self.rng.integers(0, 256, (len(t), 8)).astype(np.uint8)
        dlc = self.rng.integers(0, 9, len(t))
        return self._add(ev, can_events(t, ids, data, dlc)), self._label(start, end, "fuzzing", severity, "can", mag)

    def _spoof(self, ev, messages: Sequence[str], offsets: dict[str, float], start: float) -> np.ndarray:
        """Extra frames half a period after each genuine one, decoded, offset, re-encoded."""
        end = start + CONTINUOUS_S
        parts = []
        for name in messages:
            msg = self.db.get_message_by_name(name)
            period = message_period_s(self.config, name)
            rows = np.flatnonzero(
                (ev["kind"] == KIND_CAN) & (ev["can_id"] == msg.frame_id) & (ev["stamp"] >= start) & (ev["stamp"] < end)
            )
            data = np.zeros((len(rows), 8), np.uint8)
            for j, r in enumerate(rows):
                values = msg.decode(ev["data"][r, : msg.length].tobytes(), decode_choices=False)
                values = {k: float(v) + offsets.get(k, 0.0) for k, v in values.items()}
                frame = encode_frame(msg, values)
                data[j, : len(frame)] = np.frombuffer(frame, np.uint8)
            t = ev["stamp"][rows] + period / 2
            parts.append(can_events(t, np.full(len(rows), msg.frame_id), data, np.full(len(rows), msg.length)))
        return self._add(ev, np.concatenate(parts))

    def _spoof_speed(self, ev, severity, start, mag):
        off = self.rng.choice([-1.0, 1.0]) * mag * self.sigma["speed"] / MPH
        names = ("WHEEL_SPEED_FL", "WHEEL_SPEED_FR", "WHEEL_SPEED_RL", "WHEEL_SPEED_RR", "SPEED")
        ev = self._spoof(ev, ("WHEEL_SPEEDS", "SPEED"), {n: off for n in names}, start)
        return ev, self._label(start, start + CONTINUOUS_S, "spoof_speed", severity, "can.WHEEL_SPEEDS+SPEED", off)

    def _spoof_steering(self, ev, severity, start, mag):
        off = self.rng.choice([-1.0, 1.0]) * mag * self.sigma["steer"]
        ev = self._spoof(ev, ("STEER_ANGLE_SENSOR",), {"STEER_ANGLE": off}, start)
        return ev, self._label(start, start + CONTINUOUS_S, "spoof_steering", severity, "can.STEER_ANGLE_SENSOR", off)

    def _replay(self, ev, severity, start, mag):
        end = start + CONTINUOUS_S
        messages = list(self.config.can_messages)
        if severity == "subtle":
            messages = [messages[int(self.rng.integers(len(messages)))]]
        ids = [self.db.get_message_by_name(m).frame_id for m in messages]
        # Old frames must exist: near the start of a recording the replay comes from as far back as it reaches
        # (a fault label without injected frames would be scored as a miss of something that never happened).
        first = float(ev["stamp"][0]) if len(ev) else start
        age = min(REPLAY_AGE_S, start - first)
        if age < CONTINUOUS_S:
            raise ValueError(
                f"replay at {start:.2f} s needs at least {CONTINUOUS_S:.0f} s of earlier traffic "
                f"(the recording starts at {first:.2f} s)"
            )
        src = (ev["kind"] == KIND_CAN) & np.isin(ev["can_id"], ids)
        src &= (ev["stamp"] >= start - age) & (ev["stamp"] < end - age)
        extra = ev[src].copy()
        extra["stamp"] += age + 0.37 * message_period_s(self.config, messages[0])
        return self._add(ev, extra), self._label(start, end, "replay", severity, "can." + "+".join(messages), age)

    def _suspension(self, ev, severity, start, mag):
        messages = self.config.can_messages
        name = messages[int(self.rng.integers(len(messages)))]
        period = message_period_s(self.config, name)
        length = mag if severity == "clear" else mag * period
        can_id = self.db.get_message_by_name(name).frame_id
        rows = np.flatnonzero(
            (ev["kind"] == KIND_CAN)
            & (ev["can_id"] == can_id)
            & (ev["stamp"] >= start)
            & (ev["stamp"] < start + length)
        )
        return np.delete(ev, rows), self._label(start, start + length, "suspension", severity, f"can.{name}", length)


def signal_sigmas(accel: np.ndarray, gyro: np.ndarray, speed: np.ndarray, steer_deg: np.ndarray) -> dict[str, float]:
    """Normal-variation std per injectable target, from clean training data."""
    sig = {f: float(np.std((accel if f.startswith("accel") else gyro)[:, "xyz".index(f[-1])])) for f in IMU_FIELDS}
    sig["speed"] = float(np.std(speed))
    sig["steer"] = float(np.std(steer_deg))
    return sig


def schedule_faults(
    t_start: float, t_end: float, faults: Sequence[str], rng: np.random.Generator, margin_s: float = 4.0
) -> list[tuple[str, float]]:
    """Evenly spaced fault start times (random order, jittered) leaving clean stretches between faults."""
    faults = list(faults)
    rng.shuffle(faults)
    slot = (t_end - t_start) / len(faults)
    if slot < CONTINUOUS_S + margin_s:
        raise ValueError(f"{len(faults)} faults do not fit into {t_end - t_start:.0f} s with clean gaps")
    out = []
    for i, f in enumerate(faults):
        lo = t_start + i * slot + margin_s / 2
        hi = t_start + (i + 1) * slot - margin_s / 2 - CONTINUOUS_S
        out.append((f, float(rng.uniform(lo, max(lo, hi)))))
    return out
