"""The one place where ``sensor_msgs/Image`` and ``CompressedImage`` become numpy arrays and back.

Why its own module: every node, tool and test that touches images must agree on channel order, row padding
(``step``), size checks and copying costs. The rules here:

- **Zero-copy in.** ``msg.data`` of a received message is an ``array.array('B')``; ``np.frombuffer`` views it without a
  copy, and row padding, BGR order and alpha channels are handled by strides (a view), not by copying. The returned
  arrays are read-only views tied to the message; copy them if you keep them past the message.
- **One copy out.** Filling ``msg.data`` with an ndarray converts element by element (~440 ms for a 6 MB image, see
  ``shared/notes/ros2-from-pypi.md``). :func:`byte_array` makes the ``array.array('B')`` the field stores with a single
  memory copy (faster than ``ndarray.tobytes()``, which copies into ``bytes`` and then again into the field).
- **Every bad message is a clear** :class:`ImageConversionError`: unsupported encoding, zero size, ``step`` smaller
  than a row, data length not ``step * height``, images over ``max_pixels`` (a decompression bomb or a corrupt header),
  undecodable compressed data. Callers (the camera node) report it on ``/diagnostics`` and carry on.
- Compressed images (``jpeg``/``png``, including image_transport's ``"bgr8; jpeg compressed bgr8"`` format strings) are
  decoded by Pillow, which yields RGB whatever the original encoding was, so no channel swap is needed.

Example::

    rgb = image_to_rgb(msg)                          # (H, W, 3) uint8 RGB view of msg.data
    out = array_to_image(mask, "mono8", msg.header)  # sensor_msgs/Image with the same header
"""

from __future__ import annotations

import array
import io
import sys
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
OUTPUT_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "32FC1": (np.dtype(np.float32), 1),
}
COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")
DEFAULT_MAX_PIXELS = 8192 * 8192  # 64 MPix: anything larger is a corrupt header or a decompression bomb


class ImageConversionError(ValueError):
    """A message that cannot be turned into an image; the text says exactly why."""


def _check_size(height: int, width: int, max_pixels: int | None) -> None:
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
    _check_size(height, width, max_pixels)
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


def _compressed_format(fmt: str) -> str:
    """``jpeg`` or ``png`` from a CompressedImage.format string (``"jpeg"``, ``"bgr8; jpeg compressed bgr8"`` ...)."""
    text = fmt.lower()
    for name, keys in (("jpeg", ("jpeg", "jpg")), ("png", ("png",))):
        if any(k in text for k in keys):
            return name
    raise ImageConversionError(f"unsupported compressed format {fmt!r}; supported: {', '.join(COMPRESSED_FORMATS)}")


def compressed_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Decode a CompressedImage (jpeg or png) to a new ``(H, W, 3)`` uint8 RGB array with Pillow."""
    from PIL import Image as PILImage

    expected = _compressed_format(str(msg.format))
    data = msg.data
    if len(data) == 0:
        raise ImageConversionError("empty compressed image (0 bytes)")
    try:
        with PILImage.open(io.BytesIO(memoryview(data).cast("B"))) as img:
            actual = (img.format or "").lower()
            if actual != expected:
                raise ImageConversionError(f"format says {msg.format!r} but the data is {actual or 'unknown'}")
            _check_size(img.height, img.width, max_pixels)  # before decoding a possible bomb
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


def byte_array(values: np.ndarray) -> array.array:
    """The ``array.array('B')`` a uint8[] message field stores, filled with ONE copy of ``values``' bytes."""
    contiguous = np.ascontiguousarray(values)
    out = array.array("B")
    if contiguous.size:
        out.frombytes(memoryview(contiguous).cast("B"))
    return out


def array_to_image(values: np.ndarray, encoding: str, header: Any = None) -> Any:
    """A ``sensor_msgs/Image`` holding ``values`` (mono8, rgb8, bgr8, rgba8, bgra8 or 32FC1), with ``header``."""
    from sensor_msgs.msg import Image

    if encoding not in OUTPUT_ENCODINGS:
        raise ImageConversionError(f"cannot write encoding {encoding!r}; supported: {', '.join(OUTPUT_ENCODINGS)}")
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    values = np.asarray(values)
    expected_ndim = 2 if channels == 1 else 3
    if values.ndim == 3 and channels == 1 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim != expected_ndim or (channels > 1 and values.shape[2] != channels):
        shape = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ImageConversionError(f"{encoding} needs shape {shape}, got {values.shape}")
    if values.dtype != dtype:
        if dtype == np.uint8 and not np.issubdtype(values.dtype, np.bool_):
            raise ImageConversionError(f"{encoding} needs uint8 values, got {values.dtype}")
        values = values.astype(dtype)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(values.shape[0]), int(values.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(dtype.itemsize > 1 and sys.byteorder == "big")
    msg.step = msg.width * channels * dtype.itemsize
    msg.data = byte_array(values)
    return msg


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", header: Any = None, quality: int = 90) -> Any:
    """A ``sensor_msgs/CompressedImage`` (jpeg or png) of an RGB (or grey) uint8 image, encoded by Pillow."""
    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    name = _compressed_format(fmt)
    values = np.ascontiguousarray(rgb)
    if values.dtype != np.uint8 or values.ndim not in (2, 3):
        raise ImageConversionError(f"need a uint8 (H, W) or (H, W, 3) image, got {values.dtype} {values.shape}")
    buffer = io.BytesIO()
    kwargs = {"quality": int(quality)} if name == "jpeg" else {"compress_level": 1}
    PILImage.fromarray(values).save(buffer, format="JPEG" if name == "jpeg" else "PNG", **kwargs)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = name
    msg.data = byte_array(np.frombuffer(buffer.getbuffer(), np.uint8))
    return msg
