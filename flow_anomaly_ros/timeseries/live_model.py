"""Loading the model a live scorer runs, checked against the inputs it is given (ROS-free; the node's configure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.pipeline import StreamingScorer, load_timeseries_model
from flow_anomaly_ros.timeseries.signals import ConfigError, check_compatible


class ModelError(RuntimeError):
    """The model is missing, corrupt or does not match the configured inputs (MODEL_ERROR)."""


def load_live_scorer(
    model_dir: str, imu_sources: Sequence[str], dbc_file: str, can_enabled: bool, contributions: str
) -> StreamingScorer:
    """Load the model, check it against the configured inputs and build a warmed-up streaming scorer.

    Raises :class:`ModelError` when the model directory is missing or corrupt, when the model needs inputs that
    are not configured (IMU sources, CAN, another DBC), or when it cannot score. ``dbc_file`` (may be empty)
    decodes with that file instead of the model's (same DBC name, checked).
    """
    try:
        model = load_timeseries_model(model_dir)
        check_compatible(
            model.config, {"imu_sources": list(imu_sources), "dbc": dbc_file or None, "can_enabled": can_enabled}
        )
        if dbc_file:
            model.config = dataclasses.replace(model.config, dbc=dbc_file)
        scorer = StreamingScorer(model, contributions=contributions)
    except (ModelFileError, ConfigError, FileNotFoundError) as exc:
        raise ModelError(str(exc)) from exc
    try:  # a model that cannot score is a model error now, not a MODEL_ERROR window later
        scorer.warm_up()  # and the first live window does not pay for the back-end's lazy set-up
    except Exception as exc:  # back-ends raise their own exception types
        raise ModelError(f"model at {model_dir} cannot score: {type(exc).__name__}: {exc}") from exc
    return scorer
