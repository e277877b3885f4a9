"""The one place where ``sensor_msgs/Image`` and ``CompressedImage`` become numpy arrays and back.

The decoding functions live in :mod:`flow_anomaly_ros.data.image_messages` (no ROS import, so offline code can use
them on bag messages) and are re-exported here; the message builders below need ``sensor_msgs``.

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

from flow_anomaly_ros.data.image_messages import COMPRESSED_FORMATS as COMPRESSED_FORMATS
from flow_anomaly_ros.data.image_messages import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from flow_anomaly_ros.data.image_messages import INPUT_ENCODINGS as INPUT_ENCODINGS
from flow_anomaly_ros.data.image_messages import ImageConversionError, compressed_format
from flow_anomaly_ros.data.image_messages import compressed_to_rgb as compressed_to_rgb
from flow_anomaly_ros.data.image_messages import image_to_array as image_to_array
from flow_anomaly_ros.data.image_messages import image_to_rgb as image_to_rgb

OUTPUT_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "32FC1": (np.dtype(np.float32), 1),
}


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

    name = compressed_format(fmt)
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
