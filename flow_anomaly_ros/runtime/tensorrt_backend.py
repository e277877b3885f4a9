"""Native TensorRT backend (TensorRT 10.x and 11.x Python API): engine built from ``model.onnx``, cached, run on CUDA.

Build (once per ONNX hash x TensorRT version x GPU x precision x shape profile, see :mod:`.engine_cache`):
``trt.Builder`` -> ``create_network(flags)`` -> ``trt.OnnxParser`` -> builder config with a workspace limit and an
optimisation profile for the dynamic ``images`` input -> ``build_serialized_network``. What differs between 10 and
11 (builder precision flags vs strongly typed networks built from an FP16 / INT8 Q/DQ ONNX) is decided by
:func:`.tensorrt_plan.build_plan`, and the shape profile by :func:`.tensorrt_plan.engine_profile` from the model's or
the node's ``input_size`` or the camera resolution; both are plain functions, tested without TensorRT. The version
is checked on import and named in errors and in the engine cache key and file name.

Run: ``trt.Runtime.deserialize_cuda_engine`` -> ``create_execution_context`` -> per call ``set_input_shape``,
``set_tensor_address`` for input and output, ``execute_async_v3`` on a CUDA stream. Device buffers and the stream
come from PyTorch (present on every supported target, including JetPack), which avoids a pycuda dependency.

TensorRT cannot be installed on the development machines of this project (no NVIDIA GPU); this module is written
against the TensorRT 10/11 Python bindings (NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``), and its engine tests
run where ``import tensorrt`` works.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from flow_anomaly_ros.runtime import engine_cache
from flow_anomaly_ros.runtime.base import SegmentationBackend
from flow_anomaly_ros.runtime.export import INPUT_NAME, OUTPUT_NAME
from flow_anomaly_ros.runtime.model_files import find_onnx, read_onnx_metadata, spec_from_metadata
from flow_anomaly_ros.runtime.tensorrt_onnx import onnx_for_variant
from flow_anomaly_ros.runtime.tensorrt_plan import (
    PRECISIONS,
    BuildPlan,
    Profile,
    build_plan,
    engine_profile,
    shape_hint,
    spec_with_input_size,
    tensorrt_major,
)
from flow_anomaly_ros.segmentation.spec import SegmentationSpec

LOG = logging.getLogger(__name__)
DEFAULT_WORKSPACE_BYTES = 2 << 30
__all__ = ["PRECISIONS", "TensorRTBackend", "build_engine_bytes", "engine_key_for"]


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(
            f"TensorRT Python package not importable ({exc}); install TensorRT 10 or 11 "
            "(JetPack, or pip install 'tensorrt>=10,<12' on x86_64)"
        ) from exc
    tensorrt_major(trt.__version__)  # TensorRTVersionError naming the version if unsupported
    return trt


def _cuda_device(device: str):
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT backend needs a CUDA GPU, but torch.cuda.is_available() is False")
    dev = torch.device(device if device.startswith("cuda") else "cuda")
    return dev, torch.cuda.get_device_name(dev)


def engine_key_for(
    onnx_path: str | os.PathLike[str],
    tensorrt_version: str,
    gpu_name: str,
    precision: str = "fp16",
    input_size: tuple[int, int] | None = None,
    opt_hw: tuple[int, int] | None = None,
    min_hw: tuple[int, int] | None = None,
    max_hw: tuple[int, int] | None = None,
    max_batch: int = 1,
) -> engine_cache.EngineKey:
    """The cache key an engine for these settings is stored under (what the backend and ``seg build-engine`` use)."""
    onnx_path = find_onnx(onnx_path)
    spec = spec_with_input_size(spec_from_metadata(read_onnx_metadata(onnx_path), onnx_path), input_size)
    build_plan(tensorrt_version, precision)  # unsupported version / precision: the same error as a real build
    profile = engine_profile(spec, opt_hw, min_hw, max_hw, max_batch)
    return engine_cache.make_key(onnx_path, tensorrt_version, gpu_name, precision, profile)


def build_engine_bytes(
    onnx_path: Path,
    plan: BuildPlan,
    profile: Profile,
    spec: SegmentationSpec,
    calibration_images: Iterable[np.ndarray] | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> bytes:
    """Parse the ONNX file (or its FP16 / Q/DQ copy, per ``plan``) and build a serialised engine."""
    trt = _import_tensorrt()
    source = onnx_for_variant(onnx_path, plan.onnx_variant, spec, calibration_images, tuple(profile[1][2:]))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT {plan.version} could not parse {source}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile)
    config.add_optimization_profile(opt_profile)
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise RuntimeError(f"TensorRT {plan.version} has no BuilderFlag.{name} ({plan.precision} build plan)")
        config.set_flag(flag)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT {plan.version} failed to build an engine for {source} ({plan.precision}); see the log above"
        )
    return bytes(serialized)


class TensorRTBackend(SegmentationBackend):
    kind = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cuda",
        precision: str = "fp16",
        opt_hw: tuple[int, int] | None = None,
        min_hw: tuple[int, int] | None = None,
        max_hw: tuple[int, int] | None = None,
        max_batch: int = 1,
        calibration_images: Iterable[np.ndarray] | None = None,
        force_rebuild: bool = False,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"tensorrt precision must be one of {PRECISIONS}, got {precision!r}")
        trt = _import_tensorrt()
        import torch

        plan = build_plan(trt.__version__, precision)
        dev, gpu_name = _cuda_device(device)
        onnx_path = find_onnx(path)
        spec = spec_with_input_size(spec_from_metadata(read_onnx_metadata(onnx_path), onnx_path), input_size)
        profile = engine_profile(spec, opt_hw, min_hw, max_hw, max_batch)
        key = engine_cache.make_key(onnx_path, trt.__version__, gpu_name, precision, profile)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(dev):

            def build() -> bytes:
                return build_engine_bytes(onnx_path, plan, profile, spec, calibration_images, workspace_bytes)

            def loads(data: bytes) -> bool:
                return runtime.deserialize_cuda_engine(data) is not None

            data, self.engine_path, self.built_now = engine_cache.get_or_build(
                onnx_path, key, build, force_rebuild, validate=loads
            )
            self.engine = runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise RuntimeError(f"TensorRT {trt.__version__} could not deserialise {self.engine_path}")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(dev)
        super().__init__(spec, str(dev), precision)
        self.name = f"tensorrt{plan.major}:{gpu_name}:{precision}"
        self.tensorrt_version = trt.__version__
        self.profile = profile
        self._torch, self._dev, self._runtime = torch, dev, runtime

    @classmethod
    def build_only(cls, path: str | os.PathLike[str], **kwargs: object) -> Path:
        """Build (or find) the cached engine and return its path (``flow-anomaly seg build-engine``)."""
        backend = cls(path, **kwargs)  # type: ignore[arg-type]
        out = backend.engine_path
        backend.close()
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        lo, _, hi = self.profile
        if not all(a <= b <= c for a, b, c in zip(lo, batch.shape, hi)):
            raise ValueError(
                f"input {batch.shape} is outside the engine's shape profile {lo}..{hi}: set the camera node's "
                "input_size (every frame is resized to it) or engine_shape to the camera's [height, width], or "
                "build with `flow-anomaly seg build-engine MODEL --shape HxW` "
                f"(this engine: {shape_hint(self.profile)})"
            )
        with torch.cuda.device(self._dev), torch.cuda.stream(self.stream):
            x = torch.from_numpy(batch).to(self._dev, non_blocking=True)
            self.context.set_input_shape(INPUT_NAME, tuple(batch.shape))
            out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
            y = torch.empty(out_shape, dtype=torch.float32, device=self._dev)
            self.context.set_tensor_address(INPUT_NAME, int(x.data_ptr()))
            self.context.set_tensor_address(OUTPUT_NAME, int(y.data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            result = y.cpu()
        return result.numpy()

    def close(self) -> None:
        for attr in ("context", "engine"):
            self.__dict__.pop(attr, None)
