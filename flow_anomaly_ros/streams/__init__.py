"""The stream registry: one module per input kind (``imu``, ``can``, ``gnss``), each registering a StreamKind.

Every module of this package is imported here, so a new sensor is one file that calls :func:`register_stream`
(see ``gnss.py``, and README "Adding an input stream"): the config names its signals (``- {name: odom.speed,
odom: speed}``), the node subscribes to it from its ``streams`` parameter, bags are read through it.

Example::

    from flow_anomaly_ros import streams
    streams.get("gnss").msgtype        # 'sensor_msgs/msg/NavSatFix'
    [s.name for s in streams.all()]    # ['imu', 'can', 'gnss']
"""

from __future__ import annotations

import importlib
import pkgutil

from flow_anomaly_ros.streams.base import StreamKind, all_streams, by_kind, get, register_stream

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

all = all_streams  # the registry's list: streams.all()

__all__ = ["StreamKind", "all", "all_streams", "by_kind", "get", "register_stream"]
