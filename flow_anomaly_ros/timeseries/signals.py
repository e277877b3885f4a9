"""Signal specifications and the feature pipeline configuration (what a model was trained on).

A signal is an IMU field (``accel_x`` ... ``gyro_z`` of a named IMU source), a CAN signal (DBC message + signal
name, decoded with cantools) or a column of another stream of the registry (:mod:`flow_anomaly_ros.streams`, e.g.
``gnss: speed``; the stream module lists its columns). :class:`PipelineConfig` holds everything that turns raw
events into window features: the DBC, the signals with their SI scale and staleness limit, the CAN message periods
used by the timing features, the cross-signal consistency checks, the resampling rate, window length and stride. It
is stored in every model's manifest, so a node configured for other inputs fails with a message naming the difference
(:func:`check_compatible`).

DBC message periods: the DBC's ``GenMsgCycleTime`` when present, otherwise ``can_periods_s`` from the config (the
opendbc Toyota Prius DBC has no cycle times; the defaults in ``config/timeseries_model.yaml`` are documented there).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flow_anomaly_ros import streams
from flow_anomaly_ros.share import config_dir
from flow_anomaly_ros.streams.imu import FIELDS as IMU_FIELDS

STREAM_KEYS = ("stream", "stream_field")  # SignalSpec fields of registry-stream signals (omitted when unused)
CONSISTENCY_KINDS = ("difference", "derivative", "wheel_yaw", "steer_yaw")


class ConfigError(ValueError):
    """The feature pipeline configuration is invalid (message names the field and the valid choices)."""


@dataclass(frozen=True)
class SignalSpec:
    """One resampled input signal. ``si_scale`` converts the decoded value to SI units (m/s, rad/s, m/s²)."""

    name: str
    imu_field: str | None = None  # IMU signals: one of IMU_FIELDS
    imu_source: str = "imu"
    can_message: str | None = None  # CAN signals: DBC message and signal names
    can_signal: str | None = None
    si_scale: float = 1.0
    staleness_s: float = 0.1
    eps: float = 1e-4  # floor of the window std / diff energy before the log (SI units)
    stream: str | None = None  # other registry streams (not imu/can): stream name and one of its fields
    stream_field: str | None = None

    @property
    def is_imu(self) -> bool:
        return self.imu_field is not None

    @property
    def is_can(self) -> bool:
        return self.can_message is not None

    @property
    def stream_name(self) -> str:
        """The registry stream this signal comes from (``imu``, ``can``, ``gnss`` ...)."""
        return "imu" if self.is_imu else "can" if self.is_can else str(self.stream)


@dataclass(frozen=True)
class ConsistencySpec:
    """A cross-signal check between redundant measurements; features are the residual's mean and RMS.

    kinds: ``difference`` a - b; ``derivative`` mean(a) - d(b)/dt over the window; ``wheel_yaw`` a - (right - left)
    / track_m; ``steer_yaw`` a - speed * tan(steer / steer_ratio) / wheelbase_m (steer in rad at the wheel).
    """

    name: str
    kind: str
    a: str
    b: str | None = None
    left: str | None = None
    right: str | None = None
    speed: str | None = None
    steer: str | None = None
    track_m: float = 1.52
    wheelbase_m: float = 2.70
    steer_ratio: float = 15.74


@dataclass(frozen=True)
class PipelineConfig:
    """Raw events -> window features. Everything here is recorded in the model manifest."""

    dbc: str = "toyota_prius_2010_pt"
    rate_hz: float = 100.0
    window_s: float = 2.0
    stride_s: float = 0.1
    signals: tuple[SignalSpec, ...] = ()
    can_periods_s: dict[str, float] = field(default_factory=dict)
    consistency: tuple[ConsistencySpec, ...] = ()
    extra_expected_can_ids: tuple[int, ...] = ()
    can_timing: bool = True

    @property
    def window_ticks(self) -> int:
        return round(self.window_s * self.rate_hz)

    @property
    def stride_ticks(self) -> int:
        return round(self.stride_s * self.rate_hz)

    @property
    def signal_names(self) -> list[str]:
        return [s.name for s in self.signals]

    @property
    def imu_sources(self) -> list[str]:
        return sorted({s.imu_source for s in self.signals if s.is_imu})

    @property
    def streams(self) -> list[str]:
        """Registry streams the signals come from, in signal order (``["imu", "can", "gnss"]``)."""
        return list(dict.fromkeys(s.stream_name for s in self.signals))

    @property
    def can_messages(self) -> list[str]:
        """DBC messages that carry a configured signal (their timing is tracked)."""
        seen: list[str] = []
        for s in self.signals:
            if s.can_message and s.can_message not in seen:
                seen.append(s.can_message)
        return seen

    def validate(self) -> PipelineConfig:
        problems = []
        if not self.rate_hz > 0:
            problems.append(f"rate_hz must be > 0 (got {self.rate_hz})")
        for name, value in (("window_s", self.window_s), ("stride_s", self.stride_s)):
            ticks = value * self.rate_hz
            if not value > 0 or abs(ticks - round(ticks)) > 1e-6:
                problems.append(f"{name}={value} must be > 0 and a whole number of samples at rate_hz={self.rate_hz}")
        if self.window_ticks < 4:
            problems.append("window_s must span at least 4 samples")
        names = self.signal_names
        if not names:
            problems.append("no signals configured")
        if len(set(names)) != len(names):
            problems.append(f"duplicate signal names: {sorted({n for n in names if names.count(n) > 1})}")
        others = [k.name for k in streams.all() if k.name not in ("imu", "can")]
        for s in self.signals:
            if s.is_imu + s.is_can + (s.stream is not None) != 1:
                problems.append(
                    f"signal {s.name!r}: give exactly one of 'imu' (field), 'can' (MESSAGE.SIGNAL) or a stream "
                    f"({', '.join(others)}: FIELD)"
                )
            elif s.stream is not None:
                if s.stream not in others:
                    problems.append(f"signal {s.name!r}: stream {s.stream!r} not one of {others}")
                elif s.stream_field not in streams.get(s.stream).fields:
                    problems.append(
                        f"signal {s.name!r}: {s.stream} field {s.stream_field!r} not one of "
                        f"{list(streams.get(s.stream).fields)}"
                    )
            if s.is_imu and s.imu_field not in IMU_FIELDS:
                problems.append(f"signal {s.name!r}: imu field {s.imu_field!r} not one of {list(IMU_FIELDS)}")
            if not s.staleness_s > 0:
                problems.append(f"signal {s.name!r}: staleness_s must be > 0")
        for c in self.consistency:
            if c.kind not in CONSISTENCY_KINDS:
                problems.append(f"consistency {c.name!r}: kind {c.kind!r} not one of {list(CONSISTENCY_KINDS)}")
            for ref in (c.a, c.b, c.left, c.right, c.speed, c.steer):
                if ref is not None and ref not in names:
                    problems.append(f"consistency {c.name!r}: unknown signal {ref!r}")
        if problems:
            raise ConfigError("invalid time-series pipeline config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # stream keys only where used: an IMU/CAN model's manifest stays what it was before the registry
        d["signals"] = [
            {k: v for k, v in asdict(s).items() if not (k in STREAM_KEYS and v is None)} for s in self.signals
        ]
        d["consistency"] = [asdict(c) for c in self.consistency]
        d["extra_expected_can_ids"] = list(self.extra_expected_can_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        try:
            signals = tuple(SignalSpec(**s) for s in d.get("signals", ()))
            consistency = tuple(ConsistencySpec(**c) for c in d.get("consistency", ()))
            return cls(
                dbc=str(d.get("dbc", cls.dbc)),
                rate_hz=float(d.get("rate_hz", cls.rate_hz)),
                window_s=float(d.get("window_s", cls.window_s)),
                stride_s=float(d.get("stride_s", cls.stride_s)),
                signals=signals,
                can_periods_s={str(k): float(v) for k, v in (d.get("can_periods_s") or {}).items()},
                consistency=consistency,
                extra_expected_can_ids=tuple(int(x) for x in d.get("extra_expected_can_ids", ())),
                can_timing=bool(d.get("can_timing", True)),
            ).validate()
        except TypeError as exc:
            raise ConfigError(f"invalid time-series pipeline config: {exc}") from exc

    @classmethod
    def from_yaml_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        """Parse the compact YAML form (``imu: accel_x`` / ``can: MESSAGE.SIGNAL`` / ``gnss: speed`` per signal)."""
        others = [k.name for k in streams.all() if k.name not in ("imu", "can")]
        signals = []
        for raw in d.get("signals", []):
            raw = dict(raw)
            spec: dict[str, Any] = {"name": raw.pop("name")}
            for name in others:
                if name in raw:
                    spec["stream"], spec["stream_field"] = name, str(raw.pop(name))
            if "imu" in raw:
                spec["imu_field"] = raw.pop("imu")
                spec["imu_source"] = raw.pop("source", "imu")
            if "can" in raw:
                msg, _, sig = str(raw.pop("can")).partition(".")
                spec["can_message"], spec["can_signal"] = msg, sig
            spec.update(raw)
            signals.append(spec)
        body = dict(d)
        body["signals"] = signals
        return cls.from_dict(body)


def load_pipeline_config(path: str | Path) -> tuple[PipelineConfig, dict[str, Any]]:
    """Read a training config YAML; returns the pipeline config and the full dict (detectors, split...)."""
    path = Path(path)
    doc = _read_config_doc(path, ())
    if not isinstance(doc, dict) or "features" not in doc:
        raise ConfigError(f"config {path} needs a 'features' section")
    return PipelineConfig.from_yaml_dict(doc["features"]), doc


EXTENDED_LISTS = ("signals", "consistency")  # features lists a config with ``extends`` appends to


def _read_config_doc(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The YAML of ``path``; with ``extends: OTHER.yaml`` (relative to it) that config with this one laid over it:
    sections merge key by key, ``features.signals`` / ``features.consistency`` are appended (a GNSS model is the
    default IMU + CAN config plus its GNSS signals, written once)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(doc, dict) or "extends" not in doc:
        return doc
    base_path = (path.parent / str(doc.pop("extends"))).resolve()
    if base_path in seen:
        raise ConfigError(f"config {path}: 'extends' loops back to {base_path}")
    base = _read_config_doc(base_path, (*seen, path.resolve()))
    if not isinstance(base, dict):
        raise ConfigError(f"config {path}: extends {base_path}, which holds no mapping")
    for key, value in doc.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged = dict(base[key])
            for k, v in value.items():
                merged[k] = [*merged.get(k, []), *v] if key == "features" and k in EXTENDED_LISTS else v
            base[key] = merged
        else:
            base[key] = value
    return base


DEFAULT_CONFIG_PATH = config_dir() / "timeseries_model.yaml"  # the installed share's when installed (colcon)


def default_config() -> tuple[PipelineConfig, dict[str, Any]]:
    return load_pipeline_config(DEFAULT_CONFIG_PATH)


def resolve_dbc_path(dbc: str) -> Path:
    """A DBC file path, or the name of a DBC shipped with the ``opendbc`` package (with or without ``.dbc``)."""
    path = Path(dbc)
    if path.suffix == ".dbc" and path.is_file():
        return path
    try:
        import opendbc
    except ImportError as exc:
        raise FileNotFoundError(f"DBC {dbc!r} is not a file and the opendbc package is not installed") from exc
    name = dbc if dbc.endswith(".dbc") else dbc + ".dbc"
    candidate = Path(opendbc.__file__).parent / "dbc" / name
    if not candidate.is_file():
        raise FileNotFoundError(f"DBC {dbc!r} is neither a file nor a DBC of the opendbc package ({candidate})")
    return candidate


@functools.lru_cache(maxsize=8)
def load_dbc(dbc: str) -> Any:
    """Load a DBC with cantools (``strict=False``: many real DBCs have overlapping or loosely specified signals)."""
    import cantools

    path = resolve_dbc_path(dbc)
    try:
        return cantools.database.load_file(str(path), strict=False)
    except Exception as exc:  # cantools raises several parser error types
        raise ConfigError(f"cannot load DBC {path}: {exc}") from exc


def message_period_s(config: PipelineConfig, message: str) -> float:
    """Nominal period of a DBC message: DBC cycle time, else the config's ``can_periods_s``."""
    db = load_dbc(config.dbc)
    msg = db.get_message_by_name(message)
    if msg.cycle_time:
        return float(msg.cycle_time) / 1000.0
    if message in config.can_periods_s:
        return float(config.can_periods_s[message])
    raise ConfigError(
        f"DBC {config.dbc} gives no cycle time for {message}; set features.can_periods_s.{message} in the config"
    )


def check_compatible(model: PipelineConfig, configured: dict[str, Any]) -> None:
    """Raise ConfigError naming every difference between a model's inputs and what a node is configured for.

    ``configured`` may hold ``imu_sources`` (list), ``dbc`` (str), ``signal_names`` (list) and ``can_enabled``.
    """
    problems = []
    if "imu_sources" in configured and configured["imu_sources"] is not None:
        missing = sorted(set(model.imu_sources) - set(configured["imu_sources"]))
        if missing:
            problems.append(
                f"model needs IMU sources {model.imu_sources}, configured {list(configured['imu_sources'])} "
                f"(missing {missing})"
            )
    if configured.get("dbc") and Path(str(configured["dbc"])).stem != Path(model.dbc).stem:
        problems.append(f"model was trained with DBC {model.dbc!r}, configured {configured['dbc']!r}")
    if configured.get("signal_names") is not None and list(configured["signal_names"]) != model.signal_names:
        problems.append(f"model signals {model.signal_names} != configured {list(configured['signal_names'])}")
    if configured.get("can_enabled") is False and model.can_messages:
        problems.append(f"model needs CAN messages {model.can_messages} but CAN input is disabled")
    if problems:
        raise ConfigError("model does not match the configured inputs: " + "; ".join(problems))
