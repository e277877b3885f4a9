"""IMU stream: ``sensor_msgs/Imu`` (m/s², rad/s, REP 145), one source per topic; columns ``accel_x`` ... ``gyro_z``.

The conversion is :func:`flow_anomaly_ros.timeseries.message_events.imu_event` (a copy, no scaling); the
featurizer's ``push_imu`` takes its events. Orientation and covariances are not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flow_anomaly_ros.streams.base import StreamKind, register_stream
from flow_anomaly_ros.timeseries.events import KIND_IMU, imu_events
from flow_anomaly_ros.timeseries.message_events import imu_event

FIELDS = ("accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z")


def to_events(events: Sequence[tuple], source: int) -> np.ndarray:
    """``(stamp, accel[3], gyro[3])`` events of one IMU topic -> rows (``source``: index into imu_sources)."""
    return imu_events(
        np.array([e[0] for e in events]),
        np.array([e[1] for e in events]).reshape(-1, 3),
        np.array([e[2] for e in events]).reshape(-1, 3),
        source=source,
    )


STREAM = register_stream(
    StreamKind(
        name="imu",
        kind=KIND_IMU,
        msgtype="sensor_msgs/msg/Imu",
        ros_module="sensor_msgs.msg",
        ros_class="Imu",
        default_topic="imu/data",
        default_qos="sensor_data",
        fields=FIELDS,
        event=imu_event,
        to_events=to_events,
        doc=__doc__ or "",
    )
)
