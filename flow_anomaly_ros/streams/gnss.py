"""GNSS stream: ``sensor_msgs/NavSatFix`` fixes, turned into signals a jump, a lost fix or a spoofer moves.

A fix is packed into the events' ``values`` column as :data:`RAW` (latitude, longitude, altitude, fix status,
service, covariance type and the three diagonal position variances). Per fix the featurizer derives
:data:`FIELDS` against the previous fix of the same topic, so they need no map frame and no origin:

- ``speed``: horizontal distance to the previous fix / time between them (m/s). A position jump of J metres
  shows as a one-fix spike of about J / dt: compared with the CAN speed (consistency ``difference``) it is the
  step the fixes made beyond the distance the wheels drove (speed * dt), and with the IMU's forward acceleration
  (``derivative``) an acceleration no vehicle has. Normal GPS noise moves it by its own spread, which the
  training windows show the detector;
- ``step_m``: that horizontal distance (m); ``climb``: altitude change / dt (m/s);
- ``status``: the fix status (-1 no fix, 0 fix, 1 SBAS, 2 GBAS): a fix that degrades or drops changes it;
- ``sigma_h``: horizontal standard deviation from the reported covariance (m; 0 when its type is UNKNOWN):
  a receiver that loses its solution or is being spoofed often reports a covariance jump.

The first fix after a reset only sets the reference (no sample: the GNSS signals warm up over one fix period); a
fix without a solution (status -1) keeps the last good fix as the reference and reports zero motion; a fix with
status >= 0 but a non-finite position is invalid input. Distances use the WGS84 radii at the fix (local tangent
plane): centimetres off over the tens of metres between fixes, far below GPS noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flow_anomaly_ros.streams.base import StreamKind, register_stream
from flow_anomaly_ros.timeseries.events import stream_events
from flow_anomaly_ros.timeseries.message_events import stamp_to_seconds

KIND_GNSS = 2
RAW = ("latitude", "longitude", "altitude", "status", "service", "covariance_type", "var_east", "var_north", "var_up")
FIELDS = ("speed", "step_m", "climb", "status", "sigma_h")
STATUS_NO_FIX = -1
COVARIANCE_TYPE_UNKNOWN = 0

_A = 6378137.0  # WGS84 semi-major axis (m)
_E2 = 6.69437999014e-3  # WGS84 first eccentricity squared


def fix_event(msg: Any, stamp_s: float | None = None) -> tuple[float, tuple[float, ...]]:
    """``(stamp_s, RAW values)`` of a NavSatFix (rclpy message or rosbags dataclass); ``stamp_s`` overrides."""
    cov = msg.position_covariance
    stamp = stamp_to_seconds(msg.header.stamp) if stamp_s is None else stamp_s
    values = (
        float(msg.latitude),
        float(msg.longitude),
        float(msg.altitude),
        float(msg.status.status),
        float(msg.status.service),
        float(msg.position_covariance_type),
        float(cov[0]),
        float(cov[4]),
        float(cov[8]),
    )
    return stamp, values


def to_events(events: Sequence[tuple], source: int = 0) -> np.ndarray:
    """Fix events of one topic -> rows (kind :data:`KIND_GNSS`, ``values`` in :data:`RAW` order)."""
    return stream_events(
        KIND_GNSS,
        np.array([e[0] for e in events], np.float64),
        np.array([e[1] for e in events], np.float64).reshape(-1, len(RAW)),
        source,
    )


def fix_message(cls: Any, stamp_s: float, values: Sequence[float], frame_id: str = "gps") -> Any:
    """A NavSatFix of class ``cls`` carrying ``values`` (:data:`RAW` order), e.g. for a replay publisher."""
    lat, lon, alt, status, service, cov_type, ve, vn, vu = (float(v) for v in values[: len(RAW)])
    msg = cls()
    ns = max(0, round(stamp_s * 1e9))
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
    msg.header.frame_id = frame_id
    msg.status.status, msg.status.service = int(status), int(service)
    msg.latitude, msg.longitude, msg.altitude = lat, lon, alt
    cov = [0.0] * 9
    cov[0], cov[4], cov[8] = ve, vn, vu
    msg.position_covariance = cov
    msg.position_covariance_type = int(cov_type)
    return msg


def horizontal_step_m(lat0: float, lon0: float, lat1: float, lon1: float) -> float:
    """Horizontal distance (m) between two nearby WGS84 positions (local tangent plane at their mean latitude)."""
    phi = math.radians(0.5 * (lat0 + lat1))
    s2 = math.sin(phi) ** 2
    n = _A / math.sqrt(1 - _E2 * s2)  # prime vertical radius
    m = _A * (1 - _E2) / (1 - _E2 * s2) ** 1.5  # meridian radius
    north = math.radians(lat1 - lat0) * m
    east = math.radians(lon1 - lon0) * n * math.cos(phi)
    return math.hypot(east, north)


class _Reference:
    """The last good fix of one topic: (stamp, lat, lon, alt), or None before the first."""

    __slots__ = ("fix",)

    def __init__(self) -> None:
        self.fix: tuple[float, float, float, float] | None = None


def derive(state: _Reference, stamp_s: float, values: np.ndarray) -> np.ndarray | None:
    """:data:`FIELDS` of one fix against the previous good fix; None for the first one; ValueError if invalid."""
    lat, lon, alt, status = (float(v) for v in values[:4])
    cov_type, ve, vn = float(values[5]), float(values[6]), float(values[7])
    sigma = math.sqrt(max(ve, vn, 0.0)) if cov_type != COVARIANCE_TYPE_UNKNOWN else 0.0
    if not math.isfinite(sigma) or not math.isfinite(status):
        raise ValueError("non-finite fix status or covariance")
    if status <= STATUS_NO_FIX:  # no solution: nothing moved as far as the fixes can tell
        return None if state.fix is None else np.array([0.0, 0.0, 0.0, status, sigma])
    if not (math.isfinite(lat) and math.isfinite(lon) and math.isfinite(alt)):
        raise ValueError(f"fix status {status:g} with a non-finite position")
    previous, state.fix = state.fix, (stamp_s, lat, lon, alt)
    if previous is None:
        return None
    dt = stamp_s - previous[0]
    step = horizontal_step_m(previous[1], previous[2], lat, lon)
    return np.array([step / dt, step, (alt - previous[3]) / dt, status, sigma])


STREAM = register_stream(
    StreamKind(
        name="gnss",
        kind=KIND_GNSS,
        msgtype="sensor_msgs/msg/NavSatFix",
        ros_module="sensor_msgs.msg",
        ros_class="NavSatFix",
        default_topic="gps/fix",
        default_qos="sensor_data",
        fields=FIELDS,
        event=fix_event,
        to_events=to_events,
        message=fix_message,
        new_state=_Reference,
        derive=derive,
        doc=__doc__ or "",
    )
)
