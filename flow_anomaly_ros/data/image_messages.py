"""``sensor_msgs/Image`` and ``CompressedImage`` -> numpy arrays, for rclpy messages and rosbags dataclasses alike.

The decoding half of :mod:`flow_anomaly_ros.ros.image_conversion` (see its docstring for the rules: zero-copy views,
row padding by strides, a clear :class:`ImageConversionError` for every bad message), kept free of ROS imports so
that offline code (``maf ... --bag``, synthesis jobs with ``source: bag``) decodes bag images without rclpy: it only
reads the fields ``encoding``, ``height``, ``width``, ``step``, ``data`` and ``format``, which both kinds of message
object carry. The camera and synthesis nodes use these same functions through ``ros.image_conversion``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

# encoding -> (channels, indices of R, G, B inside a pixel, or None for grey)
_UINT8_ENCODINGS: dict[str, tuple[int, tuple[int, int, int] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
    "8UC1": (1, None),
    "8UC3": (3, (2, 1, 0)),  # OpenCV's default channel order is BGR
}
INPUT_ENCODINGS: tuple[str, ...] = tuple(_UINT8_ENCODINGS)
COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")
DEFAULT_MAX_PIXELS = 8192 * 8192  # 64 MPix: anything larger is a corrupt header or a decompression bomb


class ImageConversionError(ValueError):
    """A message that cannot be turned into an image; the text says exactly why."""


def check_size(height: int, width: int, max_pixels: int | None) -> None:
    """ImageConversionError for an empty image or one over ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`)."""
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image: {width}x{height}")
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if height * width > limit:
        raise ImageConversionError(f"image of {width}x{height} = {height * width} pixels exceeds max_pixels={limit}")


def image_to_array(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """View of an Image's pixels in its own channel order: ``(H, W)`` for grey, ``(H, W, C)`` otherwise (no copy)."""
    encoding = str(msg.encoding)
    if encoding not in _UINT8_ENCODINGS:
        raise ImageConversionError(
            f"unsupported encoding {encoding!r}; supported: {', '.join(INPUT_ENCODINGS)} (or CompressedImage jpeg/png)"
        )
    channels = _UINT8_ENCODINGS[encoding][0]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_size(height, width, max_pixels)
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than one row of {width} {encoding} pixels ({row_bytes} B)")
    data = msg.data
    size = len(data)
    if size != step * height:
        raise ImageConversionError(
            f"data has {size} bytes but step*height = {step}*{height} = {step * height} ({width}x{height} {encoding})"
        )
    flat = np.frombuffer(data, dtype=np.uint8) if size else np.empty(0, np.uint8)
    rows = flat.reshape(height, step)[:, :row_bytes]
    view = rows.reshape(height, width) if channels == 1 else rows.reshape(height, width, channels)
    if view.flags.writeable:  # bytes-backed arrays are already read-only; array.array ones are not
        view.flags.writeable = False
    return view


def image_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB view of an Image (rgb8, bgr8, rgba8, bgra8, mono8, 8UC1, 8UC3); no pixel copy."""
    pixels = image_to_array(msg, max_pixels)
    order = _UINT8_ENCODINGS[str(msg.encoding)][1]
    if order is None:
        return np.broadcast_to(pixels[:, :, None], (*pixels.shape, 3))
    if order == (0, 1, 2):
        return pixels[:, :, :3]
    return pixels[:, :, 2::-1]  # BGR(A) -> RGB by a negative stride


def compressed_format(fmt: str) -> str:
    """``jpeg`` or ``png`` from a CompressedImage.format string (``"jpeg"``, ``"bgr8; jpeg compressed bgr8"`` ...)."""
    text = fmt.lower()
    for name, keys in (("jpeg", ("jpeg", "jpg")), ("png", ("png",))):
        if any(k in text for k in keys):
            return name
    raise ImageConversionError(f"unsupported compressed format {fmt!r}; supported: {', '.join(COMPRESSED_FORMATS)}")


def compressed_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Decode a CompressedImage (jpeg or png) to a new ``(H, W, 3)`` uint8 RGB array with Pillow."""
    from PIL import Image as PILImage

    expected = compressed_format(str(msg.format))
    data = msg.data
    if len(data) == 0:
        raise ImageConversionError("empty compressed image (0 bytes)")
    try:
        with PILImage.open(io.BytesIO(memoryview(data).cast("B"))) as img:
            actual = (img.format or "").lower()
            if actual != expected:
                raise ImageConversionError(f"format says {msg.format!r} but the data is {actual or 'unknown'}")
            check_size(img.height, img.width, max_pixels)  # before decoding a possible bomb
            if img.mode not in ("RGB", "L", "RGBA", "LA", "P"):
                raise ImageConversionError(f"unsupported {actual} pixel mode {img.mode!r} (8-bit grey/RGB/RGBA only)")
            rgb = img.convert("RGB") if img.mode != "RGB" else img
            rgb.load()
            out = np.asarray(rgb)
    except ImageConversionError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError ...
        raise ImageConversionError(f"cannot decode {expected} data ({len(data)} bytes): {exc}") from exc
    if out.ndim != 3 or out.shape[2] != 3:
        raise ImageConversionError(f"decoded {expected} has shape {out.shape}, expected (H, W, 3)")
    return out
