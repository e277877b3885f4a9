"""Configuration of the demo (recording sizes, models, replay) and the cache keyed by its hash.

Everything the demo produces (the bag, the trained models) is a pure function of a config, so it is cached under
``<cache>/<kind>-<hash of the config that determines it>`` and reused on the next run: ``make demo`` is minutes
cold and seconds warm. The cache directory is ``$FLOW_ANOMALY_CACHE`` when set, else
``${XDG_CACHE_HOME:-~/.cache}/flow_anomaly_ros``; delete it (or pass ``--no-cache``) to rebuild everything.

Topic names follow the nodes' defaults (``config/*.yaml``) so that the bag plays into a stock launch unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from flow_anomaly_ros.share import config_dir

CACHE_ENV = "FLOW_ANOMALY_CACHE"
CACHE_FORMAT = 2  # bump when a cached artefact's layout changes
TS_CONFIG = config_dir() / "timeseries_model_gnss.yaml"  # IMU + CAN + GNSS model: signals, split, detector params

# Topics of the demo bag (the nodes' default input names, resolved in the root namespace).
IMU_TOPIC = "/imu/data"
CAN_TOPIC = "/from_can_bus"
CAMERA_TOPIC = "/camera/image_raw"
GPS_TOPIC = "/gps/fix"

# Local XYZ (east, north, up in metres) of the gtsam KITTI GPS file -> WGS84 around this origin. The file holds
# no geodetic origin; KITTI was recorded in Karlsruhe, so the demo places the drive there (KIT campus south).
GPS_ORIGIN_LAT_DEG = 49.011
GPS_ORIGIN_LON_DEG = 8.4163
GPS_ORIGIN_ALT_M = 115.0


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``quick()`` is the reduced version for CI."""

    seed: int = 0
    # time series: the bag holds `bag_duration_s` of the later part of the real KITTI drive (the test split);
    # the detector trains on the clean early part (time split, no overlap)
    bag_duration_s: float = 60.0
    severity: str = "clear"  # injection severity of the time-series faults ("clear" | "subtle")
    detector: str = "realnvp"
    baselines: tuple[str, ...] = ("iforest", "ocsvm", "autoencoder", "elliptic")
    # None = the splits of config/timeseries_model.yaml; --quick trains on a short part with the ts CLI's
    # --quick detector sizes (QUICK_OVERRIDES) so that the CI demo finishes in minutes
    ts_train_split: tuple[float, float] | None = None
    ts_calibrate_split: tuple[float, float] | None = None
    ts_quick: bool = False
    # camera: procedural street scenes (generated), modest size and rate so the bag and the replay stay small
    camera_hz: float = 2.0
    camera_height: int = 256
    camera_width: int = 512
    camera_anomaly_fraction: float = 0.4
    # segmentation model: the shipped mobilenet DeepLabV3 base (models/seg_base_mobilenet), fine-tuned with MAF
    # negatives pasted into generated scenes (the effect experiment's `maf` arm), threshold calibrated on clean frames
    seg_backbone: str = "mobilenet_v3_large"
    seg_base: str = "shipped"  # shipped | scratch (train a small base first, as before the shipped one) | model dir
    seg_train_steps: int = 300
    seg_train_size: tuple[int, int] = (192, 384)  # crops; the network is fully convolutional and runs at 256x512
    seg_batch_size: int = 4
    seg_quick: bool = False  # tiny MAF and pool (CI)
    # replay
    replay_rate: float = 1.0
    storage: str = "mcap"

    @classmethod
    def quick(cls) -> DemoConfig:
        """The CI-sized demo: a short bag, small camera frames, a short fine-tune."""
        return cls(
            bag_duration_s=18.0,
            baselines=("iforest", "elliptic"),
            ts_train_split=(0.0, 0.12),
            ts_calibrate_split=(0.55, 0.60),
            ts_quick=True,
            camera_hz=2.0,
            seg_train_steps=8,
            seg_train_size=(128, 256),
            seg_batch_size=2,
            seg_quick=True,
            replay_rate=2.0,
        )

    def with_overrides(self, **kw: Any) -> DemoConfig:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Which fields determine which artefact: a cached model is reused when only the replay changed, etc.
    def bag_key(self) -> str:
        return _hash(
            "bag",
            self.seed,
            self.bag_duration_s,
            self.severity,
            self.camera_hz,
            self.camera_height,
            self.camera_width,
            self.camera_anomaly_fraction,
            self.storage,
            _config_digest(TS_CONFIG),
        )

    def ts_model_key(self, detector: str | None = None) -> str:
        return _hash(
            "ts",
            detector or self.detector,
            self.ts_train_split,
            self.ts_calibrate_split,
            self.ts_quick,
            _config_digest(TS_CONFIG),
        )

    def seg_model_key(self) -> str:
        return _hash(
            "seg-maf",
            self.seed,
            self.seg_backbone,
            self.seg_base_identity(),
            self.seg_train_steps,
            self.seg_train_size,
            self.seg_batch_size,
            self.seg_quick,
            self.camera_height,
            self.camera_width,
        )

    def seg_base_identity(self) -> str:
        """The base model's weights checksum (a new shipped base retrains the cached camera model)."""
        if self.seg_base == "scratch":
            return "scratch"
        from flow_anomaly_ros.segmentation.base_model import default_base_model

        path = default_base_model() if self.seg_base == "shipped" else Path(self.seg_base)
        try:
            return str(json.loads((path / "manifest.json").read_text()).get("weights_sha256", ""))[:16]
        except (OSError, ValueError):
            return f"missing:{path}"


def _config_digest(path: Path) -> str:
    """Digest of a model config as loaded (its ``extends`` base included, so editing either retrains)."""
    from flow_anomaly_ros.timeseries.signals import ConfigError, load_pipeline_config

    try:
        doc = load_pipeline_config(path)[1]
    except ConfigError:
        return "missing"
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hash(*parts: Any) -> str:
    blob = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where cached demo artefacts live (see the module docstring)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flow_anomaly_ros"
