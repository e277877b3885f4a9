"""Model directories: safe, atomic, self-describing storage for every trained model in the package.

A model is a directory holding ``weights.safetensors`` (tensors only; nothing is ever unpickled) and
``manifest.json`` (format version, kind, input spec, threshold and calibration, library versions, training summary
and the SHA-256 of the weights). Writes go to a sibling temporary directory that is renamed into place, so a crash
never leaves a half-written model behind. Loading validates everything and raises :class:`ModelFileError` whose
message names the file and the problem.

Example::

    save_model_dir("models/ts", kind="timeseries/realnvp", tensors={"w": np.zeros(3)}, manifest={"threshold": 1.0})
    manifest, tensors = load_model_dir("models/ts", expected_kind="timeseries/realnvp")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"


class ModelFileError(RuntimeError):
    """A model file or directory is missing, corrupt, or does not match what the caller expects."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` atomically (old content removed after)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers (recorded in every manifest)."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "nflows", "sklearn", "onnx", "onnxruntime"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    return versions


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(np.asarray(value))


def save_model_dir(
    path: str | os.PathLike[str],
    kind: str,
    tensors: Mapping[str, Any],
    manifest: Mapping[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Atomically write a model directory (safetensors weights + JSON manifest) and return its path."""
    from safetensors.numpy import save_file

    path = Path(path)
    with atomic_directory(path) as tmp:
        arrays = {name: _to_numpy(t) for name, t in tensors.items()}
        save_file(arrays, str(tmp / WEIGHTS_FILE))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        full = dict(manifest)
        full.update(
            format_version=FORMAT_VERSION,
            kind=kind,
            created_unix=time.time(),
            library_versions=library_versions(),
            weights_sha256=sha256_file(tmp / WEIGHTS_FILE),
            extra_files={name: hashlib.sha256(data).hexdigest() for name, data in (extra_files or {}).items()},
        )
        (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def read_manifest(path: str | os.PathLike[str], expected_kind: str | None = None) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of a model directory (no weights are read)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model directory not found: {path}")
    if not path.is_dir():
        raise ModelFileError(f"model path is not a directory (expected a model directory with {MANIFEST_FILE}): {path}")
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise ModelFileError(f"model manifest missing: {mpath}")
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"model manifest is corrupt (not valid JSON): {mpath}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelFileError(f"model manifest is corrupt (not a JSON object): {mpath}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"model manifest {mpath} has format_version {version!r}; this package reads version {FORMAT_VERSION}"
        )
    kind = manifest.get("kind")
    if expected_kind is not None and kind != expected_kind and not str(kind).startswith(expected_kind + "/"):
        raise ModelFileError(f"model at {path} is of kind {kind!r}, expected {expected_kind!r}")
    return manifest


def load_model_dir(
    path: str | os.PathLike[str], expected_kind: str | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Validate and load a model directory; returns (manifest, numpy tensors). Never unpickles."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    manifest = read_manifest(path, expected_kind)
    wpath = path / WEIGHTS_FILE
    if not wpath.is_file():
        raise ModelFileError(f"model weights missing: {wpath}")
    digest = sha256_file(wpath)
    if digest != manifest.get("weights_sha256"):
        raise ModelFileError(
            f"model weights {wpath} do not match the manifest checksum (file corrupt, truncated or replaced): "
            f"sha256 {digest[:12]}… != {str(manifest.get('weights_sha256'))[:12]}…"
        )
    for name, expected in (manifest.get("extra_files") or {}).items():
        fpath = path / name
        if not fpath.is_file() or sha256_file(fpath) != expected:
            raise ModelFileError(f"model file {fpath} is missing or does not match the manifest checksum")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"model weights {wpath} cannot be read: {exc}") from exc
    return manifest, tensors


def model_id(manifest: Mapping[str, Any]) -> str:
    """Short, stable id for logs and messages: ``<kind>@<sha256 prefix>``."""
    return f"{manifest.get('kind', 'unknown')}@{str(manifest.get('weights_sha256', ''))[:8]}"
