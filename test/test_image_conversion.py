"""sensor_msgs/Image and CompressedImage <-> numpy: channel orders, row padding, zero copy, every bad-input case."""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from flow_anomaly_ros.ros.image_conversion import (
    ImageConversionError,
    array_to_image,
    byte_array,
    compressed_to_rgb,
    image_to_array,
    image_to_rgb,
    rgb_to_compressed,
)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (12, 17, 3), dtype=np.uint8)


def _received(msg):
    """The message as a subscriber gets it (deserialized from CDR bytes), so data is a fresh array.array."""
    return deserialize_message(serialize_message(msg), type(msg))


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=padded.shape[1], data=byte_array(padded))


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 200, np.uint8)])),
        ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
        ("8UC3", RGB[:, :, ::-1]),
    ],
)
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_give_the_same_rgb_pixels(encoding, pixels, pad):
    msg = _received(_image(np.ascontiguousarray(pixels), encoding, pad))
    rgb = image_to_rgb(msg)
    assert rgb.shape == RGB.shape and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_grey_is_broadcast_to_three_equal_channels(encoding):
    grey = RGB[:, :, 1].copy()
    rgb = image_to_rgb(_received(_image(grey, encoding, pad=3)))
    assert rgb.shape == (*grey.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], grey)


def test_conversion_is_a_view_of_the_message_buffer_not_a_copy():
    msg = _received(_image(RGB[:, :, ::-1].copy(), "bgr8", pad=4))
    buffer = np.frombuffer(msg.data, np.uint8)
    rgb = image_to_rgb(msg)
    assert np.shares_memory(rgb, buffer)
    assert not rgb.flags.writeable  # callers cannot scribble on a received message by accident


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding 'yuv422'"),
        (lambda m: setattr(m, "encoding", "16UC1"), "unsupported encoding '16UC1'"),
        (lambda m: setattr(m, "step", m.width * 3 - 1), "smaller than one row"),
        (lambda m: setattr(m, "height", m.height + 1), "data has"),
        (lambda m: setattr(m, "data", byte_array(np.zeros(10, np.uint8))), "data has 10 bytes"),
        (lambda m: (setattr(m, "height", 0), setattr(m, "data", byte_array(np.zeros(0, np.uint8)))), "empty image"),
        (lambda m: setattr(m, "width", 0), "empty image"),
    ],
)
def test_bad_images_raise_a_clear_error(mutate, reason):
    msg = _image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=reason):
        image_to_rgb(msg)


def test_gigantic_images_are_refused_before_touching_data():
    msg = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000)
    with pytest.raises(ImageConversionError, match="exceeds max_pixels"):
        image_to_rgb(msg)
    with pytest.raises(ImageConversionError, match="exceeds max_pixels=100"):
        image_to_rgb(_image(RGB, "rgb8"), max_pixels=100)


@pytest.mark.parametrize("encoding", ["mono8", "rgb8", "bgr8", "rgba8", "bgra8", "32FC1"])
def test_array_to_image_round_trips_and_keeps_the_header(encoding):
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    channels = {"mono8": 1, "32FC1": 1, "rgba8": 4, "bgra8": 4}.get(encoding, 3)
    if encoding == "32FC1":
        values = RNG.standard_normal((5, 7)).astype(np.float32)
    else:
        shape = (5, 7) if channels == 1 else (5, 7, channels)
        values = RNG.integers(0, 256, shape, dtype=np.uint8)
    msg = _received(array_to_image(values, encoding, header))
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("cam", 12, 345)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * channels * values.dtype.itemsize
    if encoding == "32FC1":
        assert msg.is_bigendian == 0
        np.testing.assert_array_equal(np.frombuffer(msg.data, "<f4").reshape(5, 7), values)
    else:
        np.testing.assert_array_equal(image_to_array(msg), values)


def test_array_to_image_rejects_wrong_shapes_and_types():
    with pytest.raises(ImageConversionError, match="rgb8 needs shape"):
        array_to_image(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="needs uint8"):
        array_to_image(np.zeros((4, 4), np.float64), "mono8")
    with pytest.raises(ImageConversionError, match="cannot write encoding"):
        array_to_image(np.zeros((4, 4), np.uint8), "yuv422")
    assert image_to_array(array_to_image(np.eye(3, dtype=bool), "mono8")).tolist() == np.eye(3, dtype=int).tolist()


def test_png_is_lossless_and_jpeg_is_close():
    png = compressed_to_rgb(_received(rgb_to_compressed(RGB, "png")))
    np.testing.assert_array_equal(png, RGB)
    yy, xx = np.mgrid[0:32, 0:48]
    smooth = np.dstack([yy * 6, xx * 4, 255 - yy * 3]).astype(np.uint8)  # JPEG-friendly gradients
    jpeg = compressed_to_rgb(_received(rgb_to_compressed(smooth, "jpeg", quality=95)))
    assert jpeg.shape == smooth.shape
    assert np.abs(jpeg.astype(int) - smooth).mean() < 3


def test_image_transport_format_strings_and_grey_png_are_understood():
    msg = rgb_to_compressed(RGB, "png")
    msg.format = "bgr8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb(msg), RGB)
    grey = rgb_to_compressed(RGB[:, :, 0].copy(), "png")
    np.testing.assert_array_equal(compressed_to_rgb(grey), np.repeat(RGB[:, :, :1], 3, axis=2))


@pytest.mark.parametrize(
    ("fmt", "data", "reason"),
    [
        ("jpeg", b"", "empty compressed image"),
        ("jpeg", b"\xff\xd8\xff\xe0 definitely not a jpeg", "cannot decode jpeg"),
        ("png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode png"),
        ("tiff", b"II*\x00", "unsupported compressed format"),
    ],
)
def test_corrupt_compressed_data_raises_a_clear_error(fmt, data, reason):
    msg = CompressedImage(format=fmt, data=byte_array(np.frombuffer(data, np.uint8)))
    with pytest.raises(ImageConversionError, match=reason):
        compressed_to_rgb(msg)


def test_truncated_jpeg_and_format_mismatch_are_errors():
    full = rgb_to_compressed(RGB, "jpeg")
    cut = CompressedImage(format="jpeg", data=full.data[: len(full.data) // 2])
    with pytest.raises(ImageConversionError, match="cannot decode jpeg"):
        compressed_to_rgb(cut)
    png = rgb_to_compressed(RGB, "png")
    png.format = "jpeg"
    with pytest.raises(ImageConversionError, match="data is png"):
        compressed_to_rgb(png)


def test_compressed_decompression_bomb_is_refused():
    big = rgb_to_compressed(np.zeros((64, 64, 3), np.uint8), "png")
    with pytest.raises(ImageConversionError, match="exceeds max_pixels=1000"):
        compressed_to_rgb(big, max_pixels=1000)


def test_agrees_with_cv_bridge_where_it_imports():
    cv_bridge = pytest.importorskip("cv_bridge", reason="cv_bridge is not installable from PyPI; runs on a ROS host")
    bridge = cv_bridge.CvBridge()
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        channels = {"mono8": 1, "rgba8": 4, "bgra8": 4}.get(encoding, 3)
        pixels = RGB[:, :, 0].copy() if channels == 1 else np.ascontiguousarray(np.dstack([RGB, RGB])[:, :, :channels])
        # cv_bridge (core.py imgmsg_to_cv2, humble..rolling) views the buffer as (height, int(step / itemsize /
        # channels), channels) and slices :width, so it honours row padding only in whole pixels; a 2-byte pad on
        # rgb8 shifts its rows. Pad by two whole pixels (any byte count is tested against our reader above).
        msg = _received(_image(pixels, encoding, pad=2 * channels))
        np.testing.assert_array_equal(image_to_array(msg), bridge.imgmsg_to_cv2(msg))
        ours = array_to_image(pixels, encoding)
        theirs = bridge.cv2_to_imgmsg(pixels, encoding)
        assert (ours.height, ours.width, ours.step, bytes(ours.data)) == (
            theirs.height,
            theirs.width,
            theirs.step,
            bytes(theirs.data),
        )
    jpeg = rgb_to_compressed(RGB, "png")
    np.testing.assert_array_equal(compressed_to_rgb(jpeg), bridge.compressed_imgmsg_to_cv2(jpeg, "rgb8"))
