"""What a TensorRT engine build does, decided without TensorRT: version support, typing/precision plan, shape profile.

These are plain functions so that the decisions that differ between TensorRT 10 and 11 (and the engine-cache key the
camera node and ``flow-anomaly seg build-engine`` must agree on) are tested on machines without TensorRT.

TensorRT 10 vs 11 (checked against NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` on release/10.x and 11.x):

* 10.x: ``BuilderFlag.FP16``/``INT8`` exist; INT8 calibrators (``IInt8EntropyCalibrator2``) exist but are deprecated
  since 10.1. ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists, and then precision flags are not allowed.
* 11.x: ``BuilderFlag`` has no FP16/INT8/BF16/FP8/INT4, the calibrator classes are gone, and networks are always
  strongly typed (``STRONGLY_TYPED`` is kept only for compatibility and ignored): layer precisions are the ONNX
  tensor types. FP16 therefore needs an FP16 ONNX, INT8 explicit quantisation (QuantizeLinear/DequantizeLinear).

The plan: FP32 builds the ONNX as exported. FP16 on 10 sets ``BuilderFlag.FP16`` on the FP32 network (weakly typed,
the path every 10.x release supports); on 11 it builds an FP16 copy of the ONNX (I/O stay FP32). INT8 on both builds
a Q/DQ copy of the ONNX (symmetric INT8, calibrated with ONNX Runtime on the calibration images) as a strongly typed
network: no calibrator API, which 11 removed, and the same engine semantics on 10 and 11.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flow_anomaly_ros.segmentation.spec import SegmentationSpec

SUPPORTED_MAJORS = (10, 11)
PRECISIONS = ("fp32", "fp16", "int8")
# no input_size and no camera resolution given: any frame from 32x32 up to 4K UHD, optimised for 1080p
DEFAULT_MIN_HW = (32, 32)
DEFAULT_OPT_HW = (1080, 1920)
DEFAULT_MAX_HW = (2160, 3840)

Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class TensorRTVersionError(RuntimeError):
    """The installed TensorRT is not a version this backend supports."""


def tensorrt_major(version: str) -> int:
    """``"10.3.0.26"`` -> 10; a clear error naming the version for anything this backend does not support."""
    match = re.match(r"\s*(\d+)\.", str(version) + ".")
    major = int(match.group(1)) if match else -1
    if major not in SUPPORTED_MAJORS:
        raise TensorRTVersionError(
            f"TensorRT {version} is not supported: this backend supports TensorRT "
            f"{' and '.join(f'{m}.x' for m in SUPPORTED_MAJORS)} (pip install 'tensorrt>=10,<12', or JetPack 6/7)"
        )
    return major


@dataclass(frozen=True)
class BuildPlan:
    """How to build an engine of ``precision`` with TensorRT ``version``."""

    version: str
    major: int
    precision: str
    onnx_variant: str  # "fp32" (the exported ONNX), "fp16" (FP16 copy) or "int8-qdq" (Q/DQ copy)
    network_flags: tuple[str, ...]  # trt.NetworkDefinitionCreationFlag members for create_network
    builder_flags: tuple[str, ...]  # trt.BuilderFlag members for the builder config

    @property
    def strongly_typed(self) -> bool:
        return self.major >= 11 or "STRONGLY_TYPED" in self.network_flags


def build_plan(version: str, precision: str) -> BuildPlan:
    if precision not in PRECISIONS:
        raise ValueError(f"tensorrt precision must be one of {PRECISIONS}, got {precision!r}")
    major = tensorrt_major(version)
    if precision == "int8":  # explicit quantisation on both: 11 has no calibrators, 10 deprecates them
        network = ("STRONGLY_TYPED",) if major == 10 else ()  # 11: always strongly typed, flag ignored
        return BuildPlan(version, major, precision, "int8-qdq", network, ())
    if precision == "fp16" and major == 10:
        return BuildPlan(version, major, precision, "fp32", (), ("FP16",))
    return BuildPlan(version, major, precision, precision, (), ())


def _padded(hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    return -(-int(hw[0]) // multiple) * multiple, -(-int(hw[1]) // multiple) * multiple


def engine_profile(
    spec: SegmentationSpec,
    shape: tuple[int, int] | None = None,
    min_shape: tuple[int, int] | None = None,
    max_shape: tuple[int, int] | None = None,
    max_batch: int = 1,
) -> Profile:
    """(min, opt, max) NCHW shapes of the padded network input.

    With an ``input_size`` (the model's, or the node's applied to ``spec`` before this is called) every frame is
    resized to it, so the profile is that one size. Otherwise ``shape`` is the camera resolution (node parameter
    ``engine_shape`` or ``seg build-engine --shape``): the engine takes exactly that size unless ``min_shape`` /
    ``max_shape`` widen it. With neither, any frame from 32x32 to 2160x3840 is accepted (optimised for 1080p).
    """
    m = spec.pad_multiple
    if spec.input_size is not None:
        hw = _padded(spec.input_size, m)
        return (1, 3, *hw), (1, 3, *hw), (int(max_batch), 3, *hw)
    if shape is None:
        lo, opt, hi = (_padded(min_shape or DEFAULT_MIN_HW, m), _padded(DEFAULT_OPT_HW, m),
                       _padded(max_shape or DEFAULT_MAX_HW, m))  # fmt: skip
        opt = (min(max(opt[0], lo[0]), hi[0]), min(max(opt[1], lo[1]), hi[1]))
    else:
        opt = _padded(shape, m)
        lo, hi = _padded(min_shape or shape, m), _padded(max_shape or shape, m)
    if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]):
        raise ValueError(f"shape profile must satisfy min <= opt <= max, got {lo} {opt} {hi}")
    return (1, 3, *lo), (1, 3, *opt), (int(max_batch), 3, *hi)


def spec_with_input_size(spec: SegmentationSpec, input_size: tuple[int, int] | None) -> SegmentationSpec:
    """``spec`` with the node's ``input_size`` applied (``None``/``(0, 0)`` keeps the model's)."""
    if input_size and all(int(v) > 0 for v in input_size):
        spec.input_size = (int(input_size[0]), int(input_size[1]))
    return spec


def shape_hint(profile: Profile) -> str:
    """The ``seg build-engine`` flags that produce ``profile`` (for error messages that tell users what to run)."""
    lo, opt, hi = profile
    flags = f"--shape {opt[2]}x{opt[3]}"
    if lo[2:] != opt[2:]:
        flags += f" --min-shape {lo[2]}x{lo[3]}"
    if hi[2:] != opt[2:]:
        flags += f" --max-shape {hi[2]}x{hi[3]}"
    return flags + (f" --max-batch {hi[0]}" if hi[0] != 1 else "")


def _hw_or_none(value) -> tuple[int, int] | None:
    if value is None or not any(int(v) for v in value):
        return None
    return int(value[0]), int(value[1])


def engine_options(
    input_size=None, shape=None, min_shape=None, max_shape=None, max_batch: int = 1
) -> dict[str, object]:
    """TensorRT backend keyword arguments from the camera node's ``input_size``/``engine_shape`` parameters or the
    ``seg build-engine`` flags (``[0, 0]``/``None`` = not set). Both go through here, so for the same settings they
    derive the same shape profile and so the same engine cache key: an engine built with the CLI is the one the node
    loads."""
    return {
        "input_size": _hw_or_none(input_size),
        "opt_hw": _hw_or_none(shape),
        "min_hw": _hw_or_none(min_shape),
        "max_hw": _hw_or_none(max_shape),
        "max_batch": int(max_batch),
    }


TENSORRT_ONLY_OPTIONS = frozenset({*engine_options(), "calibration_images", "force_rebuild", "workspace_bytes"})
