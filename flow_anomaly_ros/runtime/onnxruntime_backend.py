"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers on the exported ``model.onnx``.

``device`` picks the execution provider: ``cpu`` (CPUExecutionProvider), ``cuda[:i]`` (CUDAExecutionProvider, FP32)
or ``tensorrt[:i]`` (ORT's TensorRT EP, FP32/FP16, engine cache in ``trt_cache/`` next to the ONNX). A provider
that is not available, or a session that silently fell back to the CPU (what onnxruntime-gpu does when CUDA
libraries are missing), is an error here, so ``kind="auto"`` can log the real reason and move on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.runtime.base import SegmentationBackend
from flow_anomaly_ros.runtime.model_files import find_onnx, spec_from_metadata

_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _split_device(device: str) -> tuple[str, int]:
    name, _, index = device.partition(":")
    if name not in _PROVIDER:
        raise ValueError(f"onnxruntime device must be cpu, cuda[:i] or tensorrt[:i], got {device!r}")
    return name, int(index or 0)


class OnnxRuntimeBackend(SegmentationBackend):
    kind = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        precision: str = "fp32",
        num_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        dev, index = _split_device(device)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"onnxruntime precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and dev != "tensorrt":
            raise ValueError("onnxruntime runs the exported FP32 graph; fp16 needs device='tensorrt' (ORT TensorRT EP)")
        available = ort.get_available_providers()
        wanted = _PROVIDER[dev]
        if wanted not in available:
            raise RuntimeError(f"onnxruntime has no {wanted} in this installation (available: {', '.join(available)})")
        onnx_path = find_onnx(path)
        providers: list[Any] = []
        if dev == "tensorrt":
            cache = Path(onnx_path).parent / "trt_cache"
            cache.mkdir(exist_ok=True)
            opts = {"device_id": index, "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache)}  # fmt: skip
            providers.append(("TensorrtExecutionProvider", opts))
        if dev in ("tensorrt", "cuda"):
            providers.append(("CUDAExecutionProvider", {"device_id": index}))
        providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        active = self.session.get_providers()
        if active[0] != wanted:
            raise RuntimeError(f"onnxruntime could not start {wanted} (session runs on {active[0]}); check CUDA/cuDNN")
        spec = spec_from_metadata(self.session.get_modelmeta().custom_metadata_map, Path(onnx_path))
        super().__init__(spec, device, precision)
        self.name = f"onnxruntime:{active[0].removesuffix('ExecutionProvider')}:{precision}"
        self.onnx_path = Path(onnx_path)
        self._input = self.session.get_inputs()[0].name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: batch})[0]

    def close(self) -> None:
        self.__dict__.pop("session", None)
