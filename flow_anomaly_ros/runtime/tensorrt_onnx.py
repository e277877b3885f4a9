"""The ONNX files a strongly typed TensorRT network is built from: an FP16 copy and an INT8 Q/DQ copy.

Strongly typed networks (always, on TensorRT 11; INT8 on 10 too, see :mod:`.tensorrt_plan`) take their precision
from the ONNX tensor types, so FP16 and INT8 engines need ONNX files in those types. Both are derived from the
exported FP32 ``model.onnx`` with ONNX Runtime's own tools (a dependency of the package anyway), keep FP32 inputs and
outputs (the backend's buffers do not change), and are written atomically next to the ONNX, named by its hash, so a
re-export makes new ones and a second engine build (another GPU) reuses them. They run on ONNX Runtime as well, which
is how they are tested on machines without TensorRT.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from flow_anomaly_ros.model_store import atomic_write_bytes, sha256_file
from flow_anomaly_ros.runtime.export import INPUT_NAME
from flow_anomaly_ros.runtime.preprocess import preprocess
from flow_anomaly_ros.segmentation.spec import SegmentationSpec

LOG = logging.getLogger(__name__)


def variant_path(onnx_path: Path, variant: str, onnx_sha256: str | None = None) -> Path:
    sha = onnx_sha256 or sha256_file(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.{variant}.{sha[:12]}.onnx")


def fp16_onnx(onnx_path: Path) -> Path:
    """An FP16 copy of ``onnx_path`` (FP32 inputs/outputs, casts inserted at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = variant_path(onnx_path, "fp16")
    if out.is_file():
        return out
    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    atomic_write_bytes(out, model.SerializeToString())
    return out


class _CalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over the shared pre-processing of the calibration images."""

    def __init__(self, spec: SegmentationSpec, images: Iterable[np.ndarray], hw: tuple[int, int]) -> None:
        self._images = iter(images)
        self._spec, self._hw = spec, hw

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        if image is None:
            return None
        s = self._spec
        return {INPUT_NAME: preprocess(image[None], s.mean, s.std, self._hw, s.pad_multiple).batch}


def qdq_int8_onnx(
    onnx_path: Path, spec: SegmentationSpec, images: Iterable[np.ndarray] | None, hw: tuple[int, int]
) -> Path:
    """An explicitly quantised copy (QuantizeLinear/DequantizeLinear, symmetric INT8 as TensorRT requires:
    zero points 0, per-channel weights), calibrated on ``images`` resized to ``hw``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = variant_path(onnx_path, "int8-qdq")
    if out.is_file():
        return out
    if images is None:
        raise ValueError(f"INT8 needs calibration images (or an existing Q/DQ model {out})")
    with tempfile.TemporaryDirectory(prefix="qdq_") as tmp:
        staged = Path(tmp) / "model.qdq.onnx"
        quantize_static(
            str(onnx_path),
            str(staged),
            _CalibrationReader(spec, images, hw),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        atomic_write_bytes(out, staged.read_bytes())
    LOG.info("wrote INT8 Q/DQ model %s", out)
    return out


def onnx_for_variant(
    onnx_path: Path,
    variant: str,
    spec: SegmentationSpec,
    calibration_images: Iterable[np.ndarray] | None,
    hw: tuple[int, int],
) -> Path:
    """The ONNX file to parse for a :class:`~.tensorrt_plan.BuildPlan` ``onnx_variant``."""
    if variant == "fp32":
        return onnx_path
    if variant == "fp16":
        return fp16_onnx(onnx_path)
    if variant == "int8-qdq":
        return qdq_int8_onnx(onnx_path, spec, calibration_images, hw)
    raise ValueError(f"unknown ONNX variant {variant!r}")
