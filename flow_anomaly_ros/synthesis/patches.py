"""Inlier patches for the MAF: random crops from road images, and the uint8 ↔ float encoding the flow models.

The paper trains its MAF on patches extracted from the Cityscapes images (Hu & Kathula 2024, §4.1), resized for
efficiency (512×512 there). Small patches keep MAF sampling affordable, because sampling costs one network pass per
dimension: 8×8×3 = 192 dimensions by default. Patches are later upsampled to random sizes when pasted
(:mod:`flow_anomaly_ros.synthesis.paste`).

:class:`PatchCodec` maps uint8 patches to the flow's space: uniform dequantisation (``(v + u) / 256``, ``u ~ U[0, 1)``,
the standard trick so that a continuous density fits discrete pixels), then per-dimension standardisation with the
training set's mean and standard deviation. ``decode`` inverts it and clips to [0, 255]; samples from low-likelihood
regions often leave the pixel range, and clipping keeps them valid images (saturated colours are fine for negatives).

Example::

    patches = extract_patches(images, patch_size=8, per_image=64, rng=np.random.default_rng(0))
    codec = PatchCodec.fit(patches)
    x = codec.encode(patches, rng)     # torch.float32 (n, 192)
    codec.decode(x)                    # uint8 (n, 8, 8, 3)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_PATCH_SIZE = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


def _check_image(image: np.ndarray, where: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{where}: expected a uint8 HxWx3 RGB image, got {got}")


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Downscale (or upscale) an RGB image by ``scale`` with area-like filtering; ``scale=1`` returns it as is."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image, "RGB").resize(size, Image.Resampling.BOX))


def extract_patches(
    images: Iterable[np.ndarray],
    patch_size: int = DEFAULT_PATCH_SIZE,
    per_image: int = 64,
    rng: np.random.Generator | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Random ``patch_size``² crops, ``per_image`` from each image (after resizing by ``scale``); uint8 (n,p,p,3)."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = rng if rng is not None else np.random.default_rng(0)
    out = []
    for i, image in enumerate(images):
        _check_image(image, f"image {i}")
        image = resize_image(image, scale)
        h, w = image.shape[:2]
        if h < patch_size or w < patch_size:
            raise ValueError(f"image {i} is {h}x{w} after scaling by {scale}, smaller than the {patch_size}px patch")
        ys = rng.integers(0, h - patch_size + 1, per_image)
        xs = rng.integers(0, w - patch_size + 1, per_image)
        idx_y = ys[:, None] + np.arange(patch_size)[None, :]
        idx_x = xs[:, None] + np.arange(patch_size)[None, :]
        out.append(image[idx_y[:, :, None], idx_x[:, None, :]])
    if not out:
        raise ValueError("no images to extract patches from")
    return np.ascontiguousarray(np.concatenate(out))


def iter_image_dir(
    directory: str | Path, max_images: int | None = None, recursive: bool = True
) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield ``(path, uint8 RGB image)`` for image files in a directory (sorted); unreadable files raise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image directory not found: {directory}")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in directory.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    for count, path in enumerate(files):
        if max_images is not None and count >= max_images:
            return
        try:
            with Image.open(path) as im:
                yield path, np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc


@dataclass
class PatchCodec:
    """Per-dimension standardisation of dequantised patches (``mean``/``std`` are float32 arrays of length D)."""

    patch_size: int
    mean: np.ndarray
    std: np.ndarray

    @property
    def features(self) -> int:
        return self.patch_size * self.patch_size * 3

    @classmethod
    def fit(cls, patches: np.ndarray, min_std: float = 1e-2) -> PatchCodec:
        """Statistics of ``patches`` (uint8 (n,p,p,3)) in [0, 1] units; ``min_std`` guards flat data."""
        _check_patches(patches)
        flat = (patches.reshape(len(patches), -1).astype(np.float64) + 0.5) / 256.0
        std = np.sqrt(flat.var(0) + (1.0 / 256.0) ** 2 / 12.0)  # + the dequantisation noise
        return cls(patches.shape[1], flat.mean(0).astype(np.float32), np.maximum(std, min_std).astype(np.float32))

    def encode(self, patches: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """uint8 patches → standardised float (n, D); ``rng`` adds uniform dequantisation noise (else +0.5)."""
        _check_patches(patches, self.patch_size)
        flat = patches.reshape(len(patches), -1).astype(np.float32)
        flat += rng.random(flat.shape, dtype=np.float32) if rng is not None else 0.5
        return torch.from_numpy((flat / 256.0 - self.mean) / self.std)

    def decode(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Standardised float (n, D) → uint8 (n, p, p, 3), clipped to the pixel range."""
        arr = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.features:
            raise ValueError(f"expected (n, {self.features}) flow samples, got {arr.shape}")
        pix = (arr * self.std + self.mean) * 256.0
        pix = np.nan_to_num(pix, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.floor(pix), 0, 255).astype(np.uint8).reshape(-1, self.patch_size, self.patch_size, 3)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"codec.mean": self.mean, "codec.std": self.std}

    @classmethod
    def from_tensors(cls, patch_size: int, tensors: dict[str, np.ndarray]) -> PatchCodec:
        mean, std = np.asarray(tensors["codec.mean"], np.float32), np.asarray(tensors["codec.std"], np.float32)
        codec = cls(patch_size, mean, std)
        if mean.shape != (codec.features,) or std.shape != (codec.features,):
            raise ValueError(f"codec statistics of shape {mean.shape} do not match {patch_size}x{patch_size}x3 patches")
        return codec


def _check_patches(patches: np.ndarray, patch_size: int | None = None) -> None:
    if (
        not isinstance(patches, np.ndarray)
        or patches.dtype != np.uint8
        or patches.ndim != 4
        or patches.shape[3] != 3
        or patches.shape[1] != patches.shape[2]
    ):
        got = f"{patches.dtype} {patches.shape}" if isinstance(patches, np.ndarray) else type(patches).__name__
        raise ValueError(f"patches must be a uint8 (n, p, p, 3) array, got {got}")
    if patch_size is not None and patches.shape[1] != patch_size:
        raise ValueError(
            f"patches are {patches.shape[1]}x{patches.shape[1]}, this model expects {patch_size}x{patch_size}"
        )
