"""The one shared pre-processing: validation, normalisation, resize, padding and cropping back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import normalize

from flow_anomaly_ros.runtime.preprocess import as_image_batch, crop_logits, preprocess, resize_map
from flow_anomaly_ros.segmentation.spec import IMAGENET_MEAN, IMAGENET_STD


def _images(n=2, h=40, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_normalisation_matches_torchvision():
    imgs = _images(h=32, w=48)
    prep = preprocess(imgs, IMAGENET_MEAN, IMAGENET_STD, pad_multiple=16)
    expected = normalize(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(prep.batch, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert prep.batch.dtype == np.float32 and prep.batch.flags.c_contiguous


def test_padding_to_a_multiple_with_the_mean_colour_and_crop_back():
    imgs = _images(h=40, w=70)
    prep = preprocess(imgs, IMAGENET_MEAN, IMAGENET_STD, pad_multiple=16)
    assert prep.batch.shape == (2, 3, 48, 80) and prep.network_size == (40, 70) and prep.padded_size == (48, 80)
    assert np.all(prep.batch[:, :, 40:] == 0) and np.all(prep.batch[:, :, :, 70:] == 0)
    unpadded = preprocess(imgs, IMAGENET_MEAN, IMAGENET_STD, pad_multiple=1).batch
    np.testing.assert_array_equal(prep.batch[:, :, :40, :70], unpadded)
    logits = np.random.default_rng(1).normal(size=(2, 20, 48, 80)).astype(np.float32)
    assert crop_logits(logits, prep).shape == (2, 20, 40, 70)
    with pytest.raises(RuntimeError, match="expected"):
        crop_logits(logits[:, :, :40], prep)


def test_resize_to_the_model_input_size():
    prep = preprocess(_images(n=1, h=100, w=200), IMAGENET_MEAN, IMAGENET_STD, input_size=(64, 128))
    assert prep.image_size == (100, 200) and prep.network_size == (64, 128) and prep.batch.shape == (1, 3, 64, 128)


def test_single_image_and_list_inputs_become_a_batch():
    img = _images(n=1)[0]
    assert as_image_batch(img).shape == (1, 40, 70, 3)
    assert as_image_batch([img, img]).shape == (2, 40, 70, 3)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros((8, 8, 3), np.float32), TypeError, "uint8"),
        (np.zeros((8, 8), np.uint8), ValueError, "HxWx3"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, "HxWx3"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "empty"),
        ("image.png", TypeError, "numpy uint8"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], ValueError, "same shape"),
        ([], ValueError, "empty"),
    ],
)
def test_bad_images_raise_clear_errors(images, error, match):
    with pytest.raises(error, match=match):
        preprocess(images, IMAGENET_MEAN, IMAGENET_STD)


def test_resize_map_nearest_for_classes_and_bilinear_for_scores():
    classes = np.array([[[0, 19], [3, 4]]], np.uint8)
    up = resize_map(classes, (4, 4), nearest=True)
    assert up.dtype == np.uint8 and set(np.unique(up)) == {0, 3, 4, 19}
    scores = np.array([[[0.0, 1.0], [0.0, 1.0]]], np.float32)
    up_s = resize_map(scores, (4, 8), nearest=False)
    assert up_s.shape == (1, 4, 8) and up_s.dtype == np.float32 and 0 < up_s[0, 0, 4] < 1
