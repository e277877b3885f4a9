"""Finding a model's ONNX file and its description, wherever the user points (model directory or ``.onnx`` file).

An exported ``model.onnx`` carries the :class:`SegmentationSpec` as JSON in its ONNX ``metadata_props`` (key
:data:`~flow_anomaly_ros.segmentation.spec.ONNX_METADATA_KEY`) together with the SHA-256 of the weights it was
exported from. Inside a model directory that hash is compared with the manifest's, so an ONNX file left over from
older weights is refused with a message that says to re-export, instead of silently running the wrong model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flow_anomaly_ros.model_store import MANIFEST_FILE, ModelFileError, read_manifest
from flow_anomaly_ros.segmentation.spec import MODEL_KIND, ONNX_FILE, ONNX_METADATA_KEY, SegmentationSpec

SOURCE_SHA_KEY = "flow_anomaly_ros.source_weights_sha256"


def find_onnx(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is an ``.onnx`` file, else ``path/model.onnx``; clear error when missing."""
    path = Path(path)
    if path.is_dir():
        onnx_path = path / ONNX_FILE
        if not onnx_path.is_file():
            raise ModelFileError(f"no {ONNX_FILE} in {path}; create it with `flow-anomaly seg export {path}`")
        return onnx_path
    if not path.is_file():
        raise ModelFileError(f"model not found: {path}")
    if path.suffix != ".onnx":
        raise ModelFileError(f"expected a model directory or an .onnx file, got {path}")
    return path


def spec_from_metadata(metadata: dict[str, str], onnx_path: Path) -> SegmentationSpec:
    """The spec embedded in the ONNX metadata, else the manifest next to it; checks the ONNX is not stale."""
    sibling = onnx_path.parent / MANIFEST_FILE
    manifest = read_manifest(onnx_path.parent, expected_kind=MODEL_KIND) if sibling.is_file() else None
    if ONNX_METADATA_KEY in metadata:
        try:
            embedded = json.loads(metadata[ONNX_METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{onnx_path}: corrupt {ONNX_METADATA_KEY} metadata: {exc}") from exc
        spec = SegmentationSpec.from_manifest(embedded, source=f"{onnx_path} metadata")
        source_sha = metadata.get(SOURCE_SHA_KEY)
        if manifest is not None and source_sha and manifest.get("weights_sha256") != source_sha:
            raise ModelFileError(
                f"{onnx_path} was exported from other weights than {sibling} describes (stale export); "
                f"re-export with `flow-anomaly seg export {onnx_path.parent}`"
            )
        if manifest is not None:  # thresholds calibrated after export live in the manifest
            spec.thresholds.update(manifest.get("thresholds") or {})
        return spec
    if manifest is not None:
        return SegmentationSpec.from_manifest(manifest, source=str(sibling))
    raise ModelFileError(
        f"{onnx_path} has no {ONNX_METADATA_KEY} metadata and no {MANIFEST_FILE} next to it: cannot tell its "
        "classes and normalisation (export it with `flow-anomaly seg export`)"
    )


def read_onnx_metadata(onnx_path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file (loads the graph without external data)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"cannot read ONNX file {onnx_path}: {exc}") from exc
    return {p.key: p.value for p in model.metadata_props}
