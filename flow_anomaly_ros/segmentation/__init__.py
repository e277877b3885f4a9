"""DeepLabV3 with an extra anomaly class: model, score maps, losses, fine-tuning, data sets.

Public entry points (imported lazily, so ``import flow_anomaly_ros.segmentation.spec`` never pulls in torch):
``build_model``, ``save_segmentation_model``, ``load_segmentation_model`` (``model``), ``score_map``
(``scores``), ``SegmentationSpec`` (``spec``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "model",
    "save_segmentation_model": "model",
    "load_segmentation_model": "model",
    "AnomalyDeepLabV3": "model",
    "score_map": "scores",
    "SegmentationSpec": "spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
