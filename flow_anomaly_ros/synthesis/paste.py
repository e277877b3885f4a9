"""Paste synthetic anomaly patches into inlier images and mark them in the label image.

This is the mixed-content image of the paper (Hu & Kathula 2024, §4.1 and Figure 10, after Grcić et al.,
DenseHybrid 2022): a small patch (e.g. 8×8 sampled from a MAF) is upsampled to a random size between about 16 px and
a quarter of the image side, put at a random place, optionally blended into the image with a soft border, and the
label image gets the anomaly class (trainId 19 by default) on the pasted pixels. Everything random comes from the
caller's ``numpy.random.Generator``, so a seed reproduces the exact images and labels.

Example::

    rng = np.random.default_rng(0)
    img2, lbl2, mask = paste_patches(img, lbl, patches, rng, blend="soft")

Label modes (``label_as``):

- ``"anomaly"`` (default): pasted pixels get ``anomaly_id``; the segmentation loss trains them as the anomaly class.
- ``"ignore"``: pasted pixels get ``ignore_id``; for losses that must not see them as inliers but handle the
  negatives themselves (e.g. an energy or DenseHybrid term driven by ``anomaly_mask``).

With ``blend="soft"`` the patch fades into the image over a border of ``feather_frac`` of its size; pixels whose
blending weight is at least 0.5 are the anomaly, and ``ignore_border=True`` marks the partly blended rest as
``ignore_id`` so the loss does not learn from ambiguous pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

# Paper / DenseHybrid defaults: anomaly class after the 19 Cityscapes trainIds, 255 = ignore.
ANOMALY_ID = 19
IGNORE_ID = 255
MIN_SIZE_PX = 16  # "from about 16 px"
MAX_SIDE_FRACTION = 0.25  # "to a quarter of the image side"

BLEND_MODES = ("hard", "soft")
LABEL_MODES = ("anomaly", "ignore")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class PastedBox:
    """Where one patch went: top-left corner and size in pixels (clipped to the image)."""

    top: int
    left: int
    height: int
    width: int


def _check_inputs(image: np.ndarray, label: np.ndarray, patches: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a uint8 HxWx3 array, got {_describe(image)}")
    if not isinstance(label, np.ndarray) or label.dtype != np.uint8 or label.shape != image.shape[:2]:
        raise ValueError(
            f"label must be a uint8 HxW array matching the image {image.shape[:2]}, got {_describe(label)}"
        )
    if (
        not isinstance(patches, np.ndarray)
        or patches.dtype != np.uint8
        or patches.ndim != 4
        or patches.shape[3] != 3
        or patches.shape[1] < 1
        or patches.shape[2] < 1
    ):
        raise ValueError(f"patches must be a uint8 (n, p, p, 3) array, got {_describe(patches)}")


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def size_range(height: int, width: int, min_size: int, max_frac: float) -> tuple[int, int]:
    """Inclusive (low, high) pasted side length for an image; clamped so that small images still work."""
    side = min(height, width)
    low = max(1, min(int(min_size), side))
    high = min(side, max(low, int(max_frac * side)))
    return low, high


def feather_alpha(height: int, width: int, feather_px: float) -> np.ndarray:
    """Blending weight in [0, 1]: 1 inside, linear ramp to 0 over ``feather_px`` pixels at the border."""
    if feather_px <= 0:
        return np.ones((height, width), np.float32)
    ys = np.minimum(np.arange(height), np.arange(height)[::-1]).astype(np.float32) + 0.5
    xs = np.minimum(np.arange(width), np.arange(width)[::-1]).astype(np.float32) + 0.5
    dist = np.minimum(ys[:, None], xs[None, :])
    return np.clip(dist / float(feather_px), 0.0, 1.0)


def upsample_patch(patch: np.ndarray, height: int, width: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize one uint8 ``p×p×3`` patch to ``height×width×3``."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    if patch.shape[:2] == (height, width):
        return patch.copy()
    return np.asarray(Image.fromarray(patch, "RGB").resize((width, height), INTERPOLATIONS[interpolation]))


def paste_patches(
    image: np.ndarray,
    label: np.ndarray,
    patches: np.ndarray,
    rng: np.random.Generator,
    min_size: int = MIN_SIZE_PX,
    max_frac: float = MAX_SIDE_FRACTION,
    blend: Literal["hard", "soft"] = "soft",
    feather_frac: float = 0.2,
    anomaly_id: int = ANOMALY_ID,
    ignore_id: int = IGNORE_ID,
    label_as: Literal["anomaly", "ignore"] = "anomaly",
    ignore_border: bool = False,
    max_aspect: float = 1.0,
    interpolation: str = "bilinear",
    return_boxes: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray, list[PastedBox]]:
    """Paste every patch of ``patches`` into a copy of ``image``; returns ``(image, label, anomaly_mask)``.

    Each patch gets a side length drawn uniformly from ``[min_size, max_frac * min(H, W)]`` (clamped to the image),
    an aspect ratio drawn log-uniformly from ``[1/max_aspect, max_aspect]`` (1 = square), and a uniformly random
    position fully inside the image; later patches may cover earlier ones. ``anomaly_mask`` (bool HxW) is true on
    pixels that now show a patch (blend weight ≥ 0.5). Inputs are never modified. With ``return_boxes=True`` the
    list of :class:`PastedBox` is returned as a fourth element.
    """
    _check_inputs(image, label, patches)
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    if label_as not in LABEL_MODES:
        raise ValueError(f"label_as must be one of {LABEL_MODES}, got {label_as!r}")
    if not (0.0 < max_frac <= 1.0):
        raise ValueError(f"max_frac must be in (0, 1], got {max_frac}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1 pixel, got {min_size}")
    if max_aspect < 1.0:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    if not (0.0 <= feather_frac <= 0.5):
        raise ValueError(f"feather_frac must be in [0, 0.5], got {feather_frac}")
    for name, value in (("anomaly_id", anomaly_id), ("ignore_id", ignore_id)):
        if not 0 <= int(value) <= 255:
            raise ValueError(f"{name} must fit in uint8, got {value}")

    height, width = image.shape[:2]
    out = image.astype(np.float32)
    out_label = label.copy()
    mask = np.zeros((height, width), bool)
    boxes: list[PastedBox] = []
    low, high = size_range(height, width, min_size, max_frac)
    patch_label = anomaly_id if label_as == "anomaly" else ignore_id

    for patch in patches:
        side = int(rng.integers(low, high + 1))
        aspect = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect)))) if max_aspect > 1 else 1.0
        ph = int(np.clip(round(side * np.sqrt(aspect)), 1, height))
        pw = int(np.clip(round(side / np.sqrt(aspect)), 1, width))
        top = int(rng.integers(0, height - ph + 1))
        left = int(rng.integers(0, width - pw + 1))
        big = upsample_patch(patch, ph, pw, interpolation).astype(np.float32)
        if blend == "soft":
            alpha = feather_alpha(ph, pw, feather_frac * min(ph, pw))
        else:
            alpha = np.ones((ph, pw), np.float32)
        region = out[top : top + ph, left : left + pw]
        region[:] = alpha[..., None] * big + (1.0 - alpha[..., None]) * region
        core = alpha >= 0.5
        lbl_region = out_label[top : top + ph, left : left + pw]
        mask_region = mask[top : top + ph, left : left + pw]
        lbl_region[core] = patch_label
        mask_region |= core
        if ignore_border:
            edge = (alpha > 0) & (alpha < 1) & ~core
            # Only pixels that are not already the anomaly of an earlier patch become ignore.
            edge &= ~mask_region
            lbl_region[edge] = ignore_id
        boxes.append(PastedBox(top, left, ph, pw))

    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if return_boxes:
        return result, out_label, mask, boxes
    return result, out_label, mask


def paste_batch(
    images: np.ndarray,
    labels: np.ndarray,
    patch_source,
    rng: np.random.Generator,
    patches_per_image: int = 1,
    probability: float = 1.0,
    **paste_kwargs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste ``patches_per_image`` patches from ``patch_source(n, rng)`` into each image of an ``N×H×W×3`` batch.

    Each image receives patches with ``probability`` (the rest stay pure inliers). Returns new
    ``(images, labels, masks)``; ``paste_kwargs`` go to :func:`paste_patches`.
    """
    if images.ndim != 4 or labels.ndim != 3 or images.shape[:3] != labels.shape:
        raise ValueError(f"images must be NxHxWx3 and labels NxHxW, got {images.shape} and {labels.shape}")
    if patches_per_image < 0:
        raise ValueError(f"patches_per_image must be >= 0, got {patches_per_image}")
    chosen = rng.random(len(images)) < probability
    total = int(chosen.sum()) * patches_per_image
    pool = patch_source(total, rng) if total > 0 else None
    out_images = images.copy()
    out_labels = labels.copy()
    masks = np.zeros(labels.shape, bool)
    k = 0
    for i in np.flatnonzero(chosen):
        these = pool[k : k + patches_per_image]
        k += patches_per_image
        out_images[i], out_labels[i], masks[i] = paste_patches(images[i], labels[i], these, rng, **paste_kwargs)
    return out_images, out_labels, masks
