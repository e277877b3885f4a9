"""One inference interface for segmentation models: PyTorch, ONNX Runtime, TensorRT; export and engine cache.

``load_backend(kind, path, device="cpu", precision="fp32")`` returns a backend whose ``infer(images)`` maps uint8
RGB images to float32 logits ``N x 20 x h x w`` and whose ``predict(images)`` gives class/score maps and the anomaly
mask. See :mod:`flow_anomaly_ros.runtime.loader`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BACKEND_KINDS", "load_backend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flow_anomaly_ros.runtime import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
