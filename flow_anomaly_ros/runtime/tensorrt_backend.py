"""Native TensorRT backend (TensorRT 10 Python API): engine built from ``model.onnx``, cached, run on CUDA.

Build (once per ONNX hash × TensorRT version × GPU × precision × shape profile, see :mod:`.engine_cache`):
``trt.Builder`` → ``create_network(0)`` (explicit batch is the only mode in TensorRT 10) → ``trt.OnnxParser`` →
builder config with a workspace limit, ``BuilderFlag.FP16`` or ``BuilderFlag.INT8`` (+ FP16 fallback) and an
optimisation profile for the dynamic ``images`` input → ``build_serialized_network``. INT8 uses an
``IInt8EntropyCalibrator2`` fed by the shared pre-processing on calibration images, with its calibration cache
stored next to the ONNX so a rebuild on another GPU skips calibration.

Run: ``trt.Runtime.deserialize_cuda_engine`` → ``create_execution_context`` → per call ``set_input_shape``,
``set_tensor_address`` for input and output, ``execute_async_v3`` on a CUDA stream. Device buffers and the stream
come from PyTorch (present on every supported target, including JetPack), which avoids a pycuda dependency.

TensorRT cannot be installed on the development machines of this project (no NVIDIA index); this module is written
against the documented TensorRT 10 API and its tests run where ``import tensorrt`` works.
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
from flow_anomaly_ros.runtime.preprocess import preprocess
from flow_anomaly_ros.segmentation.spec import SegmentationSpec

LOG = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 2 << 30
DEFAULT_OPT_HW = (1024, 2048)  # Cityscapes / paper resolution


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(
            f"TensorRT Python package not importable ({exc}); install TensorRT 10 (JetPack or NVIDIA's index)"
        ) from exc
    return trt


def _cuda_device(device: str):
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT backend needs a CUDA GPU, but torch.cuda.is_available() is False")
    dev = torch.device(device if device.startswith("cuda") else "cuda")
    return dev, torch.cuda.get_device_name(dev)


def shape_profile(
    spec: SegmentationSpec,
    opt_hw: tuple[int, int] | None = None,
    min_hw: tuple[int, int] | None = None,
    max_hw: tuple[int, int] | None = None,
    max_batch: int = 1,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) NCHW shapes of the padded network input; fixed when the model has an ``input_size``."""

    def padded(hw: tuple[int, int]) -> tuple[int, int]:
        m = spec.pad_multiple
        return -(-int(hw[0]) // m) * m, -(-int(hw[1]) // m) * m

    if spec.input_size is not None:
        hw = padded(spec.input_size)
        return (1, 3, *hw), (1, 3, *hw), (max_batch, 3, *hw)
    opt = padded(opt_hw or DEFAULT_OPT_HW)
    lo = padded(min_hw or (min(opt[0], 256), min(opt[1], 256)))
    hi = padded(max_hw or opt)
    if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]):
        raise ValueError(f"shape profile must satisfy min <= opt <= max, got {lo} {opt} {hi}")
    return (1, 3, *lo), (1, 3, *opt), (max_batch, 3, *hi)


class _EntropyCalibrator:
    """Factory for an ``IInt8EntropyCalibrator2`` subclass (TensorRT is imported only when needed)."""

    @staticmethod
    def create(trt, spec: SegmentationSpec, images: Iterable[np.ndarray], shape: tuple[int, ...], cache: Path):
        import torch

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)
                self._images = iter(images)
                self._buffer = torch.empty(tuple(shape), dtype=torch.float32, device="cuda")

            def get_batch_size(self) -> int:
                return int(shape[0])

            def get_batch(self, names):  # TensorRT passes the input names
                batch = []
                for _ in range(int(shape[0])):
                    image = next(self._images, None)
                    if image is None:
                        return None
                    batch.append(image)
                prep = preprocess(np.stack(batch), spec.mean, spec.std, tuple(shape[2:]), spec.pad_multiple)
                self._buffer.copy_(torch.from_numpy(prep.batch))
                return [int(self._buffer.data_ptr())]

            def read_calibration_cache(self):
                return cache.read_bytes() if cache.is_file() else None

            def write_calibration_cache(self, data) -> None:
                engine_cache.atomic_write_bytes(cache, bytes(data))

        return Calibrator()


def build_engine_bytes(
    onnx_path: Path,
    precision: str,
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    spec: SegmentationSpec,
    calibration_images: Iterable[np.ndarray] | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> bytes:
    """Parse the ONNX file and build a serialised engine with the TensorRT 10 builder."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile)
    config.add_optimization_profile(opt_profile)
    if precision in ("fp16", "int8"):
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in later TensorRT 10 releases
            LOG.warning("this GPU has no fast FP16; building anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        cache = engine_cache.calibration_cache_path(onnx_path, engine_cache.sha256_file(onnx_path))
        if calibration_images is None and not cache.is_file():
            raise ValueError(f"INT8 needs calibration images (or an existing calibration cache {cache})")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _EntropyCalibrator.create(trt, spec, calibration_images or [], profile[1], cache)
        config.set_calibration_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} ({precision}); see the log above")
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
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"tensorrt precision must be one of {PRECISIONS}, got {precision!r}")
        trt = _import_tensorrt()
        import torch

        dev, gpu_name = _cuda_device(device)
        onnx_path = find_onnx(path)
        spec = spec_from_metadata(read_onnx_metadata(onnx_path), onnx_path)
        profile = shape_profile(spec, opt_hw, min_hw, max_hw, max_batch)
        key = engine_cache.make_key(onnx_path, trt.__version__, gpu_name, precision, profile)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(dev):

            def build() -> bytes:
                return build_engine_bytes(onnx_path, precision, profile, spec, calibration_images, workspace_bytes)

            def loads(data: bytes) -> bool:
                return runtime.deserialize_cuda_engine(data) is not None

            data, self.engine_path, self.built_now = engine_cache.get_or_build(
                onnx_path, key, build, force_rebuild, validate=loads
            )
            self.engine = runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialise {self.engine_path}")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(dev)
        super().__init__(spec, str(dev), precision)
        self.name = f"tensorrt:{gpu_name}:{precision}"
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
            raise ValueError(f"input {batch.shape} is outside the engine's shape profile {lo}..{hi}; rebuild it with "
                             "matching --min-shape/--max-shape or set input_size in the model")  # fmt: skip
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
