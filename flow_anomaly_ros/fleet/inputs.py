"""Which bags a fleet job covers, and the fingerprints that key its stored results.

A bag is a rosbag2 directory (with ``metadata.yaml``) or a single ``.mcap`` / ``.db3`` file. Inputs:

- positional paths (a bag, or a directory searched recursively for bags);
- ``--manifest FILE``: one bag per line, ``PATH [VEHICLE [DRIVE]]`` separated by whitespace or commas; ``#``
  starts a comment; relative paths are relative to the manifest's directory.

The bag hash is a cheap content fingerprint (metadata.yaml, every file's name and size, and the first and last MiB
of each): a re-recorded or truncated bag gets a new hash, and the driver never reads whole bags to hash them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BAG_SUFFIXES = (".mcap", ".db3")
EDGE_BYTES = 1 << 20
UNKNOWN_VEHICLE = "unknown"


class FleetInputError(ValueError):
    """The inputs name no bag, or a manifest line cannot be read (message says which)."""


@dataclass(frozen=True)
class BagJob:
    """One recording of the fleet job."""

    path: str
    vehicle: str = UNKNOWN_VEHICLE
    drive: str = ""

    def __post_init__(self) -> None:
        if not self.drive:
            object.__setattr__(self, "drive", Path(self.path).name)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _is_bag_dir(p: Path) -> bool:
    return (p / "metadata.yaml").is_file()


def find_bags(root: Path) -> list[Path]:
    """rosbag2 directories under ``root`` (a bag directory is not searched further), sorted."""
    if _is_bag_dir(root):
        return [root]
    found: list[Path] = []
    for meta in sorted(root.rglob("metadata.yaml")):
        bag = meta.parent
        if not any(parent in found for parent in bag.parents):
            found.append(bag)
    return found


def jobs_from_paths(paths: Sequence[str | Path]) -> list[BagJob]:
    """Positional inputs: a bag is one job (even if missing: it becomes an error row); a directory is searched.

    Bags found under a directory take the vehicle id from their first sub-directory (``ROOT/VEHICLE/.../BAG``).
    """
    jobs: list[BagJob] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and not _is_bag_dir(p):
            bags = find_bags(p)
            if not bags:
                raise FleetInputError(f"no rosbag2 bag (directory with metadata.yaml) under {p}")
            for bag in bags:
                rel = bag.relative_to(p).parts
                jobs.append(BagJob(str(bag), rel[0] if len(rel) > 1 else UNKNOWN_VEHICLE))
        else:
            jobs.append(BagJob(str(p)))
    return jobs


def jobs_from_manifest(manifest: str | Path) -> list[BagJob]:
    """``PATH [VEHICLE [DRIVE]]`` per line (whitespace or commas), ``#`` comments, paths relative to the file."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FleetInputError(f"manifest {manifest} does not exist")
    jobs = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f for f in line.replace(",", " ").split() if f]
        if len(fields) > 3:
            raise FleetInputError(f"{manifest}:{n}: expected PATH [VEHICLE [DRIVE]], got {len(fields)} fields")
        path = Path(fields[0])
        if not path.is_absolute():
            path = manifest.parent / path
        jobs.append(BagJob(str(path), *fields[1:]))
    return jobs


def collect_jobs(paths: Sequence[str | Path], manifest: str | Path | None) -> list[BagJob]:
    """All inputs, duplicates (same resolved path) dropped, in input order."""
    jobs = jobs_from_paths(paths) + (jobs_from_manifest(manifest) if manifest else [])
    if not jobs:
        raise FleetInputError("no bag given: pass bag paths, a directory of bags, or --manifest FILE")
    seen: set[str] = set()
    out = []
    for j in jobs:
        key = str(Path(j.path).resolve())
        if key not in seen:
            seen.add(key)
            out.append(j)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------------------------
def _hash_file_edges(h: Any, f: Path) -> None:
    size = f.stat().st_size
    h.update(f"{f.name}\0{size}\0".encode())
    with f.open("rb") as fh:
        h.update(fh.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            fh.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(fh.read())


def bag_hash(path: str | Path) -> str | None:
    """Content fingerprint of a bag (see the module docstring); None when the path does not exist."""
    p = Path(path)
    if not p.exists():
        return None
    h = hashlib.sha256(b"bag-v1\0")
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        _hash_file_edges(h, f)
    return h.hexdigest()


def models_hash(model_dirs: Iterable[str | Path | None], options: dict[str, Any]) -> str:
    """Hash of every model file (names and bytes) and of the options that change a bag's results."""
    h = hashlib.sha256(b"models-v1\0")
    for d in model_dirs:
        if d is None:
            h.update(b"none\0")
            continue
        for f in sorted(x for x in Path(d).rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(d)}\0".encode())
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()
