"""What the ``ts`` commands and ``fleet train`` share at the command line: the training config as a user error.

Its own module so that ``timeseries.cli`` (which registers the commands) and ``timeseries.bag_training`` (which
runs ``ts train --bag`` and ``ts score``) both use it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_config(path: Path | None) -> tuple[Any, dict[str, Any]]:
    """(PipelineConfig, raw document) of ``path``, or of the shipped config/timeseries_model.yaml when None."""
    from flow_anomaly_ros.cli import UserError
    from flow_anomaly_ros.timeseries.signals import ConfigError, default_config, load_pipeline_config

    try:
        return load_pipeline_config(path) if path else default_config()
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
