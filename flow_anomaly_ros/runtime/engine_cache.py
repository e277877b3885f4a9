"""TensorRT engine cache: engines live next to their ONNX file, keyed by what makes an engine valid.

A TensorRT engine is only valid for the exact network, TensorRT version, GPU and build settings it was built with
("Version tag does not match" is the classic failure when one of them changes). The key is therefore the SHA-256 of
the ONNX file, the TensorRT version, the GPU name, the precision and the optimisation-profile shapes. The engine is
written as ``<onnx stem>.<precision>.trt<major>.<key[:12]>.engine`` (``model.fp16.trt11.0123456789ab.engine``: the
TensorRT major version is visible in the name) plus a JSON sidecar with the full key, atomically; a later
start with the same key loads it, any mismatch (or an unreadable engine) triggers exactly one rebuild. Engines for
other GPUs or versions in the same folder are left alone (several machines can share a model folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from flow_anomaly_ros.model_store import atomic_write_bytes, atomic_write_json, sha256_file

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max) NCHW

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict:
        d = asdict(self)
        d["profile"] = [list(s) for s in self.profile]
        return d


def make_key(
    onnx_path: str | os.PathLike[str],
    tensorrt_version: str,
    gpu_name: str,
    precision: str,
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
) -> EngineKey:
    prof = tuple(tuple(int(v) for v in s) for s in profile)
    return EngineKey(sha256_file(onnx_path), str(tensorrt_version), str(gpu_name), precision, prof)  # type: ignore[arg-type]


def engine_path(onnx_path: str | os.PathLike[str], key: EngineKey) -> Path:
    onnx_path = Path(onnx_path)
    major = re.match(r"\d*", key.tensorrt_version).group(0) or "x"
    return onnx_path.with_name(f"{onnx_path.stem}.{key.precision}.trt{major}.{key.digest()[:12]}.engine")


def load_cached(onnx_path: str | os.PathLike[str], key: EngineKey) -> bytes | None:
    """The cached engine bytes for ``key``, or None when there is none or its sidecar does not match."""
    path = engine_path(onnx_path, key)
    meta_path = path.with_suffix(".engine.json")
    if not path.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        LOG.warning("engine cache sidecar %s unreadable; rebuilding", meta_path)
        return None
    if meta.get("key") != key.to_json():
        LOG.warning("engine cache %s was built for %s; rebuilding for %s", path, meta.get("key"), key.to_json())
        return None
    return path.read_bytes()


def store(onnx_path: str | os.PathLike[str], key: EngineKey, engine: bytes) -> Path:
    path = engine_path(onnx_path, key)
    atomic_write_bytes(path, engine)
    atomic_write_json(path.with_suffix(".engine.json"), {"key": key.to_json(), "engine_sha256": _sha(engine)})
    return path


def get_or_build(
    onnx_path: str | os.PathLike[str],
    key: EngineKey,
    build: Callable[[], bytes],
    force_rebuild: bool = False,
    validate: Callable[[bytes], bool] | None = None,
) -> tuple[bytes, Path, bool]:
    """Return ``(engine bytes, path, built_now)``; ``build`` runs only on a miss, a mismatch or ``force_rebuild``.

    ``validate`` (e.g. "does TensorRT deserialise it") rejects a corrupt cached engine, which is then rebuilt.
    """
    path = engine_path(onnx_path, key)
    if not force_rebuild:
        cached = load_cached(onnx_path, key)
        if cached is not None and (validate is None or validate(cached)):
            LOG.info("using cached TensorRT engine %s", path)
            return cached, path, False
        if cached is not None:
            LOG.warning("cached TensorRT engine %s failed to load; rebuilding", path)
    LOG.warning("building TensorRT engine %s (%s); this can take minutes", path.name, key.precision)
    engine = build()
    if not engine:
        raise RuntimeError(f"TensorRT engine build for {onnx_path} returned nothing")
    return engine, store(onnx_path, key, engine), True


def cached_engines(onnx_path: str | os.PathLike[str]) -> list[Path]:
    onnx_path = Path(onnx_path)
    pattern = re.compile(re.escape(onnx_path.stem) + r"\.(fp32|fp16|int8)\.trt(\d+|x)\.[0-9a-f]{12}\.engine$")
    return sorted(p for p in onnx_path.parent.iterdir() if pattern.match(p.name))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
