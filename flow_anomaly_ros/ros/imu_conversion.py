"""sensor_msgs/Imu <-> the time-series core's IMU event, and ROS time <-> float seconds.

The core (``flow_anomaly_ros.timeseries``) works on plain events so that live and offline scoring share one path
(docs/architecture.md): an IMU sample is ``(stamp_s, accel[3], gyro[3])`` in m/s² and rad/s, exactly the units of
``sensor_msgs/Imu`` (REP 145), so the conversion is a copy with no scaling. Orientation and covariances are not
used by the detector and are ignored (an all-zero covariance means "unknown" anyway).

Stamps are float seconds. ``stamp_to_seconds(seconds_to_stamp(t))`` is not bit-exact for every float ``t``
(nanosecond quantisation), so anything compared with the node's output must go through :func:`roundtrip_seconds`,
which is what a stamp looks like after a trip through a message.
"""

from __future__ import annotations

from builtin_interfaces.msg import Time
from sensor_msgs.msg import Imu

from flow_anomaly_ros.timeseries.message_events import NS_PER_S, stamp_to_seconds
from flow_anomaly_ros.timeseries.message_events import ImuEvent as ImuEvent
from flow_anomaly_ros.timeseries.message_events import imu_event as imu_event


def seconds_to_stamp(seconds: float) -> Time:
    """Float seconds as ``builtin_interfaces/Time`` (rounded to the nearest nanosecond; negative clamps to 0)."""
    ns = max(0, round(seconds * NS_PER_S))
    sec, nanosec = divmod(ns, NS_PER_S)
    return Time(sec=int(sec), nanosec=int(nanosec))


def roundtrip_seconds(seconds: float) -> float:
    """``seconds`` as it reads back from a message stamp (what the node sees)."""
    return stamp_to_seconds(seconds_to_stamp(seconds))


def imu_message(stamp_s: float, accel, gyro, frame_id: str = "imu_link") -> Imu:
    """A ``sensor_msgs/Imu`` carrying one IMU sample (orientation marked unavailable: covariance[0] = -1)."""
    msg = Imu()
    msg.header.stamp = seconds_to_stamp(stamp_s)
    msg.header.frame_id = frame_id
    msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = (float(v) for v in accel)
    msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = (float(v) for v in gyro)
    msg.orientation_covariance[0] = -1.0
    return msg
