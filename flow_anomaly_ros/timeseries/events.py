"""Input events shared by the live node and offline scoring: IMU samples, CAN frames and the registry's streams.

A *recording* is a numpy structured array (:data:`EVENT_DTYPE`) of IMU samples, CAN frames and samples of the other
streams of :mod:`flow_anomaly_ros.streams` (GNSS fixes ...) sorted by stamp, plus the names of the IMU sources its
``source`` column indexes. IMU and CAN have columns of their own; every other stream packs its sample into the
``values`` column (up to :data:`VALUES_WIDTH` numbers, the layout its stream module documents) with its own ``kind``
code, so a new stream needs no change here. The same rows feed
:class:`flow_anomaly_ros.timeseries.pipeline.StreamingScorer` offline (``score_recording``) and, converted to ROS
messages, the node; that is why live and offline scores are identical. The field names follow the event files of
the node's replay publisher (``test/ts_replay_publisher.py``).

Example::

    ev = concat_events([imu_events(t, accel, gyro), can_events(t_can, ids, data, dlc)])
    rec = Recording(events=ev, imu_sources=("imu",))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

KIND_IMU, KIND_CAN = 0, 1
VALUES_WIDTH = 12
_BASE_FIELDS = [
    ("kind", "i1"),
    ("stamp", "f8"),
    ("source", "i2"),  # IMU: index into Recording.imu_sources
    ("accel", "f8", (3,)),
    ("gyro", "f8", (3,)),
    ("can_id", "u4"),
    ("data", "u1", (8,)),
    ("dlc", "u1"),
    ("is_error", "?"),
    ("is_extended", "?"),
]
_V1_DTYPE = np.dtype(_BASE_FIELDS)  # recordings saved before the ``values`` column (IMU and CAN only)
EVENT_DTYPE = np.dtype([*_BASE_FIELDS, ("values", "f8", (VALUES_WIDTH,))])


class ImuSample(NamedTuple):
    stamp_s: float
    accel: Sequence[float]
    gyro: Sequence[float]
    source: str = "imu"


class CanFrame(NamedTuple):
    stamp_s: float
    can_id: int
    data: bytes
    dlc: int | None = None
    is_error: bool = False
    is_extended: bool = False


class StreamSample(NamedTuple):
    """One sample of a registry stream other than IMU/CAN (``values`` in its module's layout, e.g. a GNSS fix)."""

    stamp_s: float
    stream: str
    values: Sequence[float]


def new_events(n: int) -> np.ndarray:
    return np.zeros(n, dtype=EVENT_DTYPE)


def imu_events(stamps: np.ndarray, accel: np.ndarray, gyro: np.ndarray, source: int = 0) -> np.ndarray:
    """IMU rows: ``stamps`` (N,), ``accel``/``gyro`` (N, 3)."""
    ev = new_events(len(stamps))
    ev["kind"] = KIND_IMU
    ev["stamp"] = stamps
    ev["source"] = source
    ev["accel"] = accel
    ev["gyro"] = gyro
    return ev


def can_events(
    stamps: np.ndarray,
    can_ids: np.ndarray,
    data: np.ndarray,
    dlc: np.ndarray,
    is_error: np.ndarray | None = None,
    is_extended: np.ndarray | None = None,
) -> np.ndarray:
    """CAN rows: ``data`` is (N, 8) uint8 (bytes past ``dlc`` are ignored)."""
    ev = new_events(len(stamps))
    ev["kind"] = KIND_CAN
    ev["stamp"] = stamps
    ev["can_id"] = can_ids
    ev["data"] = data
    ev["dlc"] = dlc
    if is_error is not None:
        ev["is_error"] = is_error
    if is_extended is not None:
        ev["is_extended"] = is_extended
    return ev


def stream_events(kind: int, stamps: np.ndarray, values: np.ndarray, source: int = 0) -> np.ndarray:
    """Rows of a registry stream: ``values`` (N, k) with k <= VALUES_WIDTH, in its stream module's layout."""
    values = np.asarray(values, dtype=np.float64).reshape(len(stamps), -1)
    if values.shape[1] > VALUES_WIDTH:
        raise ValueError(f"a stream sample holds at most {VALUES_WIDTH} values, got {values.shape[1]}")
    ev = new_events(len(stamps))
    ev["kind"] = kind
    ev["stamp"] = stamps
    ev["source"] = source
    ev["values"][:, : values.shape[1]] = values
    return ev


def concat_events(parts: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate event arrays and sort them by stamp (stable, so equal stamps keep their order)."""
    ev = np.concatenate([np.asarray(p, dtype=EVENT_DTYPE) for p in parts])
    return ev[np.argsort(ev["stamp"], kind="stable")]


@dataclass
class Recording:
    """Events sorted by stamp, the IMU source names, and free-form metadata (JSON-serialisable)."""

    events: np.ndarray
    imu_sources: tuple[str, ...] = ("imu",)
    meta: dict[str, Any] = field(default_factory=dict)

    def slice_time(self, start_s: float, end_s: float) -> Recording:
        st = self.events["stamp"]
        keep = (st >= start_s) & (st < end_s)
        return Recording(self.events[keep], self.imu_sources, dict(self.meta))

    def save(self, path: str | Path) -> None:
        """Write ``.npz`` (events + sources) atomically; no pickle involved."""
        import io
        import json

        from flow_anomaly_ros.model_store import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            events=self.events,
            imu_sources=np.array(self.imu_sources, dtype="U64"),
            meta=np.array(json.dumps(self.meta, default=str)),
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        import json

        with np.load(path, allow_pickle=False) as z:
            events = z["events"]
            if events.dtype == _V1_DTYPE:  # IMU/CAN-only file of an earlier version: same rows, no values
                old, events = events, new_events(len(events))
                for name in _V1_DTYPE.names:
                    events[name] = old[name]
            if events.dtype != EVENT_DTYPE:
                raise ValueError(f"{path}: events have dtype {events.dtype}, expected {EVENT_DTYPE}")
            return cls(events, tuple(str(s) for s in z["imu_sources"]), json.loads(str(z["meta"])))
