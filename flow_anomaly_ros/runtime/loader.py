"""``load_backend``: pick and open an inference backend for a segmentation model.

Kinds: ``torch`` (model directory), ``onnxruntime`` (model directory with ``model.onnx``, or an ``.onnx`` file),
``tensorrt`` (native TensorRT 10 engine built from the ONNX file and cached next to it) and ``auto``, which tries
TensorRT → ONNX Runtime CUDA → ONNX Runtime CPU → torch and logs which one it chose and why each earlier one was
skipped. With ``kind="auto"``, ``device="cpu"`` restricts the choice to CPU backends; ``device="cuda[:i]"`` (or
``"auto"``) tries the GPU ones first. The chosen backend records the decisions in ``backend.selection``.

Example::

    backend = load_backend("auto", "models/seg", device="cuda", precision="fp16")
    print(backend.name, backend.selection)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from flow_anomaly_ros.runtime.base import SegmentationBackend

LOG = logging.getLogger(__name__)
BACKEND_KINDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt", "auto")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


def _open(kind: str, path: str | os.PathLike[str], device: str, precision: str, **options: object):
    if kind != "tensorrt":  # engine shape options (camera node, seg build-engine) only concern TensorRT
        from flow_anomaly_ros.runtime.tensorrt_plan import TENSORRT_ONLY_OPTIONS

        options = {k: v for k, v in options.items() if k not in TENSORRT_ONLY_OPTIONS}
    if kind == "torch":
        from flow_anomaly_ros.runtime.torch_backend import TorchBackend

        return TorchBackend.from_path(path, device=device, precision=precision, **options)
    if kind == "onnxruntime":
        from flow_anomaly_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device=device, precision=precision, **options)
    if kind == "tensorrt":
        from flow_anomaly_ros.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, device=device, precision=precision, **options)
    raise ValueError(f"unknown backend kind {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")


def load_backend(
    kind: str,
    path: str | os.PathLike[str],
    device: str = "cpu",
    precision: str = "fp32",
    **options: object,
) -> SegmentationBackend:
    """Open a backend of ``kind`` for the model at ``path``; ``auto`` falls back and logs why."""
    if kind not in BACKEND_KINDS:
        raise ValueError(f"unknown backend kind {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if kind != "auto":
        backend = _open(kind, path, device, precision, **options)
        backend.selection = [(backend.name, "requested explicitly")]
        return backend
    return _load_auto(path, device, precision, **options)


def _candidates(device: str, precision: str) -> list[tuple[str, str, str, str | None]]:
    """(kind, device, precision, reason to skip or None) in fallback order."""
    gpu = device if device.startswith("cuda") else "cuda"
    index = gpu.partition(":")[2]
    cpu_only = device == "cpu"
    gpu_skip = "device='cpu' requested" if cpu_only else None
    return [
        ("tensorrt", gpu, precision, gpu_skip),
        ("onnxruntime", "cuda" + (f":{index}" if index else ""), "fp32", gpu_skip),
        ("onnxruntime", "cpu", "fp32", None),
        ("torch", "cpu" if cpu_only else gpu, precision if (not cpu_only and precision == "fp16") else "fp32", None),
    ]


def _load_auto(path: str | os.PathLike[str], device: str, precision: str, **options: object) -> SegmentationBackend:
    if device not in ("cpu", "auto") and not device.startswith("cuda"):
        raise ValueError(f"kind='auto' takes device 'cpu', 'cuda[:i]' or 'auto', got {device!r}")
    selection: list[tuple[str, str]] = []
    torch_cpu_retry: Callable[[], SegmentationBackend] | None = None
    for kind, dev, prec, skip in _candidates(device, precision):
        label = f"{kind}:{dev}:{prec}"
        if skip:
            selection.append((label, f"skipped: {skip}"))
            continue
        try:
            backend = _open(kind, path, dev, prec, **options)
        except Exception as exc:  # every failure is a reason to fall back, and is logged
            reason = f"{type(exc).__name__}: {exc}"
            selection.append((label, f"unavailable: {reason}"))
            LOG.info("backend %s unavailable: %s", label, reason)
            if kind == "torch" and dev != "cpu":
                torch_cpu_retry = lambda: _open("torch", path, "cpu", "fp32", **options)  # noqa: E731
            continue
        note = "chosen" if prec == precision else f"chosen ({precision} not supported here, running {prec})"
        selection.append((backend.name, note))
        backend.selection = selection
        failed = any(why.startswith("unavailable") for _, why in selection)
        LOG.log(logging.WARNING if failed else logging.INFO, "segmentation backend: %s", _summary(selection))
        return backend
    if torch_cpu_retry is not None:
        backend = torch_cpu_retry()
        selection.append((backend.name, "chosen (no GPU backend could start)"))
        backend.selection = selection
        LOG.warning("segmentation backend: %s", _summary(selection))
        return backend
    raise RuntimeError("no segmentation backend could be opened: " + _summary(selection))


def _summary(selection: list[tuple[str, str]]) -> str:
    return "; ".join(f"{name} -> {why}" for name, why in selection)
