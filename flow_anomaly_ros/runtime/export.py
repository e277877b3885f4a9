"""ONNX export of a segmentation model directory, and the torch ↔ ONNX Runtime parity check.

Uses the legacy TorchScript exporter (``dynamo=False``) at opset 17 by default, because the dynamo exporter cannot
emit opset < 18 and TensorRT 8.5/8.6 (older JetPack) needs ≤ 17 (``shared/notes/ml-stack.md`` §4). Batch, height
and width are dynamic. The file carries the :class:`SegmentationSpec` and the SHA-256 of the source weights in its
metadata, passes ``onnx.checker``, and is written atomically to ``<model dir>/model.onnx`` unless told otherwise.

Example::

    onnx_path = export_onnx("models/seg")
    report = parity_check("models/seg", make_images(2, 64, 128))  # {"max_abs_diff": ..., "argmax_agreement": ...}
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from flow_anomaly_ros.model_store import atomic_write_bytes
from flow_anomaly_ros.runtime.model_files import SOURCE_SHA_KEY
from flow_anomaly_ros.segmentation.spec import ONNX_FILE, ONNX_METADATA_KEY

LOG = logging.getLogger(__name__)
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    sample_size: tuple[int, int] = (128, 256),
) -> Path:
    """Export ``model_dir`` to ONNX (dynamic N, H, W); returns the written path."""
    import onnx
    import torch

    from flow_anomaly_ros.segmentation.model import load_segmentation_model

    if not 9 <= int(opset) <= 21:
        raise ValueError(f"opset must be between 9 and 21 for the legacy exporter, got {opset}")
    model, spec, manifest = load_segmentation_model(model_dir, device="cpu")
    out_path = Path(out) if out is not None else Path(model_dir) / ONNX_FILE
    x = torch.zeros(1, 3, *sample_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter DeprecationWarning and TracerWarnings on shapes
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N", 2: "H", 3: "W"}},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {
        ONNX_METADATA_KEY: spec.to_json(),
        SOURCE_SHA_KEY: str(manifest.get("weights_sha256", "")),
        "flow_anomaly_ros.exporter": f"torch {torch.__version__} legacy opset {opset}",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "flow_anomaly_ros"
    onnx.checker.check_model(proto)
    atomic_write_bytes(out_path, proto.SerializeToString())
    LOG.info("exported %s (%s, opset %d) to %s", model_dir, spec.backbone, opset, out_path)
    return out_path


def parity_check(model_dir: str | os.PathLike[str], images: np.ndarray, onnx_path: str | None = None) -> dict:
    """Run torch and ONNX Runtime (CPU) on the same uint8 images; max abs diff and arg-max agreement."""
    from flow_anomaly_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from flow_anomaly_ros.runtime.torch_backend import TorchBackend

    ref = TorchBackend.from_path(model_dir).infer(images)
    ort_logits = OnnxRuntimeBackend(onnx_path or model_dir).infer(images)
    diff = np.abs(ref - ort_logits)
    agree = float(np.mean(ref.argmax(1) == ort_logits.argmax(1)))
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / max(1e-12, float(np.abs(ref).max()))),
        "argmax_agreement": agree,
        "shape": list(ref.shape),
    }
