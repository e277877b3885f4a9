"""Real KITTI drive (IMU at 100 Hz, GPS at 1 Hz) loaded from the installed ``gtsam`` package.

gtsam ships a KITTI raw-drive recording as example data (``KittiEquivBiasedImu.txt``: 46,968 IMU rows over 471.5 s,
columns ``Time dt accelX accelY accelZ omegaX omegaY omegaZ`` in m/s² and rad/s, body frame x forward, y left,
z up; ``KittiGps_converted.txt``: 470 fixes in local XYZ metres). The files are read from the installed package at
run time and never copied into this repository: gtsam is BSD-3, but the KITTI data is CC BY-NC-SA 3.0
(non-commercial). Cite: A. Geiger, P. Lenz, C. Stiller, R. Urtasun, "Vision meets Robotics: The KITTI Dataset",
IJRR 2013.

The drive is normal driving only; anomalies are injected by :mod:`flow_anomaly_ros.data.injection`.

Example::

    drive = load_kitti_drive()
    drive.t.shape, drive.accel.shape, drive.speed.shape   # (46967,), (46967, 3), (46967,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMU_FILE = "KittiEquivBiasedImu.txt"
GPS_FILE = "KittiGps_converted.txt"
CITATION = "KITTI raw data (Geiger et al., IJRR 2013), CC BY-NC-SA 3.0, via the gtsam package's example data"
# Time constant (s) of the complementary filter that fuses GPS speed (1 Hz) with the IMU's forward acceleration.
SPEED_FILTER_TAU_S = 2.0
# Local XYZ (east, north, up in metres) of the gtsam KITTI GPS file -> WGS84 around this origin. The file holds
# no geodetic origin; KITTI was recorded in Karlsruhe, so the drive is placed there (KIT campus south).
GPS_ORIGIN_LAT_DEG = 49.011
GPS_ORIGIN_LON_DEG = 8.4163
GPS_ORIGIN_ALT_M = 115.0
GPS_SIGMA_M = 1.5  # horizontal standard deviation the fixes report (NavSatFix covariance, vertical twice that)
_A = 6378137.0  # WGS84
_E2 = 6.69437999014e-3


@dataclass(frozen=True)
class KittiDrive:
    """One KITTI drive on the IMU's time base (seconds from the first IMU sample)."""

    t: np.ndarray  # (N,) s, strictly increasing
    accel: np.ndarray  # (N, 3) m/s², body frame x forward, y left, z up
    gyro: np.ndarray  # (N, 3) rad/s
    gps_t: np.ndarray  # (M,) s on the same time base
    gps_xyz: np.ndarray  # (M, 3) m, local frame
    speed: np.ndarray  # (N,) m/s, GPS speed fused with IMU forward acceleration (see derive_speed)
    source: str = CITATION

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0])

    def head(self, seconds: float) -> KittiDrive:
        """The first ``seconds`` of the drive (for small tests and quick runs)."""
        keep = self.t < self.t[0] + seconds
        gps = self.gps_t < self.t[0] + seconds + 1.0
        return KittiDrive(
            self.t[keep],
            self.accel[keep],
            self.gyro[keep],
            self.gps_t[gps],
            self.gps_xyz[gps],
            self.speed[keep],
            self.source,
        )


def data_file(name: str) -> Path:
    """Path of a gtsam example data file; clear error when gtsam or the file is missing."""
    try:
        import gtsam
    except ImportError as exc:  # pragma: no cover - gtsam is a pinned dependency
        raise FileNotFoundError(
            f"the KITTI example data comes with the 'gtsam' package (pip install gtsam==4.3.0): {exc}"
        ) from exc
    try:
        path = Path(gtsam.findExampleDataFile(name))
    except (RuntimeError, IndexError) as exc:
        raise FileNotFoundError(f"gtsam example data file {name!r} not found in the installed gtsam: {exc}") from exc
    if not path.is_file():
        raise FileNotFoundError(f"gtsam example data file {name!r} not found at {path}")
    return path


def _read_table(path: Path, delimiter: str | None) -> np.ndarray:
    try:
        table = np.loadtxt(path, skiprows=1, delimiter=delimiter, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from exc
    if table.ndim != 2:
        raise ValueError(f"{path}: expected a table, got shape {table.shape}")
    return table


def derive_speed(t: np.ndarray, accel_x: np.ndarray, gps_t: np.ndarray, gps_xyz: np.ndarray) -> np.ndarray:
    """Forward speed at the IMU rate: complementary filter of GPS speed (low frequencies) and IMU accel (high).

    GPS speed alone (1 Hz finite differences) is too coarse for wheel speeds; integrated accelerometer alone drifts.
    The filter ``v' = a_x - b + (v_gps - v) / tau`` with the accelerometer bias ``b`` estimated as the mean of
    ``a_x - dv_gps/dt`` gives a smooth, physically consistent speed that a wheel-speed sensor would report.
    """
    dxy = np.diff(gps_xyz[:, :2], axis=0)
    v_mid = np.linalg.norm(dxy, axis=1) / np.maximum(np.diff(gps_t), 1e-3)
    t_mid = 0.5 * (gps_t[1:] + gps_t[:-1])
    v_gps = np.interp(t, t_mid, v_mid)
    bias = float(np.mean(accel_x - np.gradient(v_gps, t)))
    v = np.empty_like(t)
    v[0] = v_gps[0]
    dt = np.diff(t, prepend=t[0])
    for i in range(1, len(t)):
        v[i] = v[i - 1] + dt[i] * (accel_x[i] - bias + (v_gps[i] - v[i - 1]) / SPEED_FILTER_TAU_S)
    return np.maximum(v, 0.0)


def load_kitti_drive() -> KittiDrive:
    """Load the KITTI IMU + GPS drive from gtsam's example data (first IMU row, an isolated sample, is dropped)."""
    imu = _read_table(data_file(IMU_FILE), None)
    gps = _read_table(data_file(GPS_FILE), ",")
    if imu.shape[1] != 8 or gps.shape[1] != 4:
        raise ValueError(f"unexpected KITTI columns: IMU {imu.shape}, GPS {gps.shape}")
    imu = imu[1:]  # the first row precedes a 1.9 s gap (its dt column is the absolute time)
    t0 = imu[0, 0]
    t = imu[:, 0] - t0
    keep = np.concatenate([[True], np.diff(t) > 0])
    imu, t = imu[keep], t[keep]
    gps_t = gps[:, 0] - t0
    gps_xyz = gps[:, 1:4]
    in_range = (gps_t >= t[0] - 1.0) & (gps_t <= t[-1] + 1.0)
    gps_t, gps_xyz = gps_t[in_range], gps_xyz[in_range]
    accel = np.ascontiguousarray(imu[:, 2:5])
    gyro = np.ascontiguousarray(imu[:, 5:8])
    speed = derive_speed(t, accel[:, 0], gps_t, gps_xyz)
    return KittiDrive(t=t, accel=accel, gyro=gyro, gps_t=gps_t, gps_xyz=gps_xyz, speed=speed)


def local_to_geodetic(
    xyz: np.ndarray,
    lat0_deg: float = GPS_ORIGIN_LAT_DEG,
    lon0_deg: float = GPS_ORIGIN_LON_DEG,
    alt0_m: float = GPS_ORIGIN_ALT_M,
) -> np.ndarray:
    """Local tangent-plane metres (x east, y north, z up) -> (lat, lon, alt) on WGS84 around the origin.

    Uses the meridian and prime-vertical radii at the origin; over the few kilometres of a KITTI drive the error is
    centimetres, far below GPS noise.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    lat0 = math.radians(lat0_deg)
    s = math.sin(lat0)
    n = _A / math.sqrt(1 - _E2 * s * s)  # prime vertical radius
    m = _A * (1 - _E2) / (1 - _E2 * s * s) ** 1.5  # meridian radius
    lat = lat0_deg + np.degrees(xyz[:, 1] / (m + alt0_m))
    lon = lon0_deg + np.degrees(xyz[:, 0] / ((n + alt0_m) * math.cos(lat0)))
    return np.stack([lat, lon, alt0_m + xyz[:, 2]], axis=1)


def fix_values(xyz: np.ndarray, sigma_m: float = GPS_SIGMA_M) -> np.ndarray:
    """NavSatFix values (``streams.gnss.RAW`` order) of local positions: WGS84 fix, GPS service, diagonal
    covariance known, as the demo bag's ``/gps/fix`` carries them."""
    geo = local_to_geodetic(xyz)
    out = np.empty((len(geo), 9))
    out[:, :3] = geo
    out[:, 3:6] = (0.0, 1.0, 2.0)  # STATUS_FIX, SERVICE_GPS, COVARIANCE_TYPE_DIAGONAL_KNOWN
    out[:, 6:9] = (sigma_m**2, sigma_m**2, (2 * sigma_m) ** 2)
    return out
