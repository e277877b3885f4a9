"""The one pre-processing function every backend uses (torch, ONNX Runtime, TensorRT), and its inverse for outputs.

uint8 RGB images (``HxWx3`` or ``NxHxWx3``) are validated, optionally resized to the model's ``input_size``
(bilinear, PIL), normalised with the model's mean/std (``(x / 255 - mean) / std``, torchvision's convention) into
a contiguous float32 ``N x 3 x H x W`` batch, and zero-padded at the bottom/right to a multiple of ``pad_multiple``
(zero is the mean colour after normalisation). :func:`crop_logits` removes the padding again and
:func:`resize_map` brings class or score maps back to the camera resolution. Having exactly one implementation is
what makes the backends agree to float precision (the parity tests check it).

Example::

    prep = preprocess(images, mean=spec.mean, std=spec.std, input_size=None, pad_multiple=16)
    logits = crop_logits(run_network(prep.batch), prep)  # N x C x h x w
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocessed:
    """A network-ready batch and the sizes needed to undo resize and padding."""

    batch: np.ndarray  # float32, N x 3 x padded_h x padded_w, C-contiguous
    image_size: tuple[int, int]  # (H, W) of the input images
    network_size: tuple[int, int]  # (h, w) after resize, before padding

    @property
    def padded_size(self) -> tuple[int, int]:
        return int(self.batch.shape[2]), int(self.batch.shape[3])


def as_image_batch(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Validate uint8 RGB images and return an ``N x H x W x 3`` uint8 array (no copy when already one)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: got an empty list")
        shapes = {getattr(im, "shape", None) for im in images}
        if len(shapes) != 1:
            raise ValueError(f"images in one batch must have the same shape, got {sorted(map(str, shapes))}")
        images = np.stack([as_image_batch(im)[0] for im in images])
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy uint8 array (HxWx3 or NxHxWx3 RGB), got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 RGB, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be HxWx3 or NxHxWx3 RGB, got shape {images.shape}")
    if min(images.shape[:3]) < 1:
        raise ValueError(f"images must not be empty, got shape {images.shape}")
    return images


def preprocess(
    images: np.ndarray | Sequence[np.ndarray],
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, int] | None = None,
    pad_multiple: int = 16,
) -> Preprocessed:
    """Resize (optional), normalise and pad uint8 RGB images into a float32 NCHW batch."""
    batch = as_image_batch(images)
    n, h, w, _ = batch.shape
    if input_size is not None and tuple(input_size) != (h, w):
        th, tw = int(input_size[0]), int(input_size[1])
        batch = np.stack([np.asarray(Image.fromarray(im).resize((tw, th), Image.Resampling.BILINEAR)) for im in batch])
    nh, nw = batch.shape[1:3]
    mult = max(1, int(pad_multiple))
    ph, pw = -(-nh // mult) * mult, -(-nw // mult) * mult
    std_arr = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std_arr)
    offset = -np.asarray(mean, np.float32).reshape(1, 3, 1, 1) / std_arr
    chw = batch.transpose(0, 3, 1, 2)
    if (ph, pw) == (nh, nw):
        out = np.ascontiguousarray(chw * scale + offset, dtype=np.float32)
    else:
        out = np.zeros((n, 3, ph, pw), np.float32)
        np.multiply(chw, scale, out=out[:, :, :nh, :nw], casting="unsafe")
        out[:, :, :nh, :nw] += offset
    return Preprocessed(out, (h, w), (int(nh), int(nw)))


def crop_logits(logits: np.ndarray, prep: Preprocessed) -> np.ndarray:
    """Remove the padding: ``N x C x padded`` → ``N x C x network_size`` float32."""
    h, w = prep.network_size
    if logits.ndim != 4 or logits.shape[0] != prep.batch.shape[0] or tuple(logits.shape[2:]) != prep.padded_size:
        raise RuntimeError(
            f"backend returned logits of shape {logits.shape}; "
            f"expected (N={prep.batch.shape[0]}, C, {prep.padded_size[0]}, {prep.padded_size[1]})"
        )
    out = logits[:, :, :h, :w]
    return np.ascontiguousarray(out, dtype=np.float32)


def resize_map(maps: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize ``N x h x w`` class maps (nearest) or score maps (bilinear) to ``size = (H, W)``."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    out = [np.asarray(Image.fromarray(m).resize((size[1], size[0]), resample)) for m in maps]
    return np.stack(out).astype(maps.dtype, copy=False)
