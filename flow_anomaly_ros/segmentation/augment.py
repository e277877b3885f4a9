"""Training-time augmentation of (image, trainId label) pairs: scale, crop, flip and colour jitter.

Why: a segmentation network trained on one image size and one rendering learns the size (and, through zero
padding, the image border) instead of the classes. Random scale + crop shows every class at many sizes and
positions, and colour jitter keeps the network from keying on exact RGB values (a vehicle camera's exposure and
white balance change all the time). Geometric ops move image and label together (bilinear / nearest), so the label
stays exact; colour ops touch the image only.

Example::

    rng = np.random.default_rng(0)
    image, label = scale_pair(image, label, 1.3)
    image = color_jitter(image, 0.3, rng)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IGNORE = 255


def scale_pair(image: np.ndarray, label: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (bilinear) and label (nearest) by ``factor``."""
    if factor <= 0:
        raise ValueError(f"scale factor must be > 0, got {factor}")
    h, w = label.shape
    th, tw = max(1, round(h * factor)), max(1, round(w * factor))
    if (th, tw) == (h, w):
        return image, label
    img = np.asarray(Image.fromarray(image).resize((tw, th), Image.Resampling.BILINEAR))
    lbl = np.asarray(Image.fromarray(label).resize((tw, th), Image.Resampling.NEAREST))
    return img, lbl


def random_crop(
    image: np.ndarray, label: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random crop to ``size``; smaller images are padded (image black, label ignore)."""
    h, w = size
    ih, iw = label.shape
    if ih < h or iw < w:
        ph, pw = max(0, h - ih), max(0, w - iw)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        ih, iw = label.shape
    y = int(rng.integers(0, ih - h + 1))
    x = int(rng.integers(0, iw - w + 1))
    return image[y : y + h, x : x + w], label[y : y + h, x : x + w]


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation, per-channel gain (white balance) and gamma of a uint8 RGB image.

    Each factor is drawn from ``[1 - strength, 1 + strength]`` (gain and gamma from a third of that range).
    ``strength`` 0 returns the image unchanged.
    """
    if strength <= 0:
        return image
    s = float(strength)
    img = image.astype(np.float32) / 255.0
    img *= rng.uniform(1 - s, 1 + s)  # brightness
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - s, 1 + s) + mean  # contrast
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = (img - grey[..., None]) * rng.uniform(1 - s, 1 + s) + grey[..., None]  # saturation
    img *= rng.uniform(1 - s / 3, 1 + s / 3, size=3).astype(np.float32)  # white balance
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(1 - s / 3, 1 + s / 3)  # gamma
    return (img * 255.0 + 0.5).astype(np.uint8)
