"""PyTorch backend: the reference implementation (and the only one that needs no export).

Runs the :class:`~flow_anomaly_ros.segmentation.model.AnomalyDeepLabV3` from a model directory on CPU or CUDA.
``precision="fp16"`` uses CUDA autocast (FP16 kernels, FP32 logits); on CPU only ``fp32`` is accepted, since CPU
FP16 convolutions are slower than FP32 in PyTorch.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from flow_anomaly_ros.runtime.base import SegmentationBackend
from flow_anomaly_ros.segmentation.model import AnomalyDeepLabV3, load_segmentation_model
from flow_anomaly_ros.segmentation.spec import SegmentationSpec

PRECISIONS = ("fp32", "fp16")


class TorchBackend(SegmentationBackend):
    kind = "torch"

    def __init__(
        self,
        model: AnomalyDeepLabV3,
        spec: SegmentationSpec,
        device: str = "cpu",
        precision: str = "fp32",
        num_threads: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"torch backend precision must be one of {PRECISIONS}, got {precision!r}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch backend: device 'cuda' requested but torch.cuda.is_available() is False")
        if precision == "fp16" and dev.type != "cuda":
            raise ValueError("torch backend: fp16 needs a CUDA device (use fp32 on CPU)")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        super().__init__(spec, str(dev), precision)
        self.model = model.to(dev).eval()
        self._dev = dev

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], device: str = "cpu", precision: str = "fp32", **kw: object):
        model, spec, _ = load_segmentation_model(path, device="cpu")
        return cls(model, spec, device, precision, **kw)  # type: ignore[arg-type]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self._dev, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self._dev.type, torch.float16, enabled=self.precision == "fp16"):
            out = self.model(x)
        return out.float().cpu().numpy()
