"""Pasting synthetic patches into inlier images: sizes, places, labels, blending and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from flow_anomaly_ros.synthesis.paste import (
    ANOMALY_ID,
    IGNORE_ID,
    feather_alpha,
    paste_batch,
    paste_patches,
    size_range,
)


def _scene(h: int = 128, w: int = 256) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 100, np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[h // 2 :] = 0
    label[: h // 2] = 10
    return image, label


def _patches(n: int, p: int = 8, value: int = 250) -> np.ndarray:
    return np.full((n, p, p, 3), value, np.uint8)


def test_same_seed_gives_identical_output_and_different_seed_differs():
    image, label = _scene()
    patches = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    a = paste_patches(image, label, patches, np.random.default_rng(7))
    b = paste_patches(image, label, patches, np.random.default_rng(7))
    c = paste_patches(image, label, patches, np.random.default_rng(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_hard_paste_labels_exactly_the_pasted_box_as_anomaly():
    image, label = _scene()
    out, lbl, mask, boxes = paste_patches(
        image, label, _patches(1), np.random.default_rng(0), blend="hard", return_boxes=True
    )
    (box,) = boxes
    expected = np.zeros_like(mask)
    expected[box.top : box.top + box.height, box.left : box.left + box.width] = True
    np.testing.assert_array_equal(mask, expected)
    assert (lbl[mask] == ANOMALY_ID).all()
    np.testing.assert_array_equal(lbl[~mask], label[~mask])
    assert (out[mask] == 250).all()
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_sizes_stay_between_min_size_and_a_quarter_of_the_short_side():
    image, label = _scene(128, 256)
    low, high = size_range(128, 256, 16, 0.25)
    assert (low, high) == (16, 32)
    sides = []
    rng = np.random.default_rng(3)
    for _ in range(200):
        _, _, _, boxes = paste_patches(image, label, _patches(1), rng, blend="hard", return_boxes=True)
        sides.append(boxes[0].height)
        assert boxes[0].height == boxes[0].width
        assert boxes[0].top + boxes[0].height <= 128 and boxes[0].left + boxes[0].width <= 256
    assert min(sides) == 16 and max(sides) == 32


def test_positions_cover_the_whole_image():
    image, label = _scene(64, 64)
    rng = np.random.default_rng(5)
    hits = np.zeros((64, 64), int)
    for _ in range(300):
        hits += paste_patches(image, label, _patches(1), rng, blend="hard")[2]
    assert (hits > 0).mean() > 0.98


def test_soft_blend_fades_into_the_image_and_labels_only_the_core():
    image, label = _scene()
    out, lbl, mask, (box,) = paste_patches(
        image, label, _patches(1), np.random.default_rng(2), blend="soft", feather_frac=0.25, return_boxes=True
    )
    region = out[box.top : box.top + box.height, box.left : box.left + box.width, 0].astype(int)
    assert region[0, 0] < 200  # corner is mostly background
    assert region[box.height // 2, box.width // 2] == 250  # centre is the patch
    inside = np.zeros_like(mask)
    inside[box.top : box.top + box.height, box.left : box.left + box.width] = True
    assert mask.sum() < inside.sum() and (mask <= inside).all()
    assert (lbl[mask] == ANOMALY_ID).all()


def test_ignore_border_marks_partly_blended_pixels_as_ignore():
    image, label = _scene()
    _, lbl, mask = paste_patches(image, label, _patches(1), np.random.default_rng(2), blend="soft", ignore_border=True)
    assert (lbl == IGNORE_ID).any()
    assert not (mask & (lbl == IGNORE_ID)).any()


def test_label_as_ignore_marks_pasted_pixels_ignore():
    image, label = _scene()
    _, lbl, mask = paste_patches(image, label, _patches(2), np.random.default_rng(4), label_as="ignore")
    assert mask.any() and (lbl[mask] == IGNORE_ID).all()
    assert not (lbl == ANOMALY_ID).any()


def test_inputs_are_not_modified_and_custom_anomaly_id_is_used():
    image, label = _scene()
    i0, l0 = image.copy(), label.copy()
    _, lbl, mask = paste_patches(image, label, _patches(2), np.random.default_rng(0), anomaly_id=42)
    np.testing.assert_array_equal(image, i0)
    np.testing.assert_array_equal(label, l0)
    assert (lbl[mask] == 42).all()


def test_small_images_clamp_the_size_instead_of_failing():
    image, label = _scene(12, 20)
    _, _, mask = paste_patches(image, label, _patches(1), np.random.default_rng(0), blend="hard")
    assert mask.sum() == 144  # 12x12, the whole short side


def test_aspect_ratio_varies_when_allowed():
    image, label = _scene()
    rng = np.random.default_rng(9)
    ratios = set()
    for _ in range(30):
        *_, (box,) = paste_patches(image, label, _patches(1), rng, max_aspect=2.0, return_boxes=True)
        ratios.add(round(box.height / box.width, 2))
    assert len(ratios) > 5


def test_upsampled_patch_keeps_the_patch_structure():
    image, label = _scene()
    patch = np.zeros((1, 2, 2, 3), np.uint8)
    patch[0, 0, :, 0] = 255  # top half red
    out, _, _, (box,) = paste_patches(
        image, label, patch, np.random.default_rng(1), blend="hard", interpolation="nearest", return_boxes=True
    )
    region = out[box.top : box.top + box.height, box.left : box.left + box.width]
    assert (region[: box.height // 2, :, 0] == 255).all() and (region[box.height // 2 :, :, 0] == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"blend": "fancy"}, "blend"),
        ({"label_as": "bg"}, "label_as"),
        ({"max_frac": 0.0}, "max_frac"),
        ({"min_size": 0}, "min_size"),
        ({"anomaly_id": 300}, "anomaly_id"),
        ({"interpolation": "cubic"}, "interpolation"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, message):
    image, label = _scene()
    with pytest.raises(ValueError, match=message):
        paste_patches(image, label, _patches(1), np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize(
    "image, label, patches, message",
    [
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), np.zeros((1, 4, 4, 3), np.uint8), "image"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((1, 4, 4, 3), np.uint8), "image"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), np.zeros((1, 4, 4, 3), np.uint8), "label"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), np.zeros((4, 4, 3), np.uint8), "patches"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), np.zeros((1, 4, 4, 3), np.float32), "patches"),
    ],
)
def test_bad_arrays_raise_clear_errors(image, label, patches, message):
    with pytest.raises(ValueError, match=message):
        paste_patches(image, label, patches, np.random.default_rng(0))


def test_feather_alpha_is_one_inside_and_ramps_at_the_border():
    alpha = feather_alpha(20, 20, 5)
    assert alpha[10, 10] == 1.0 and alpha[0, 0] < 0.2 and alpha.min() > 0


def test_paste_batch_uses_the_patch_source_and_probability():
    images = np.full((6, 64, 64, 3), 100, np.uint8)
    labels = np.zeros((6, 64, 64), np.uint8)
    calls = []

    def source(n, rng):
        calls.append(n)
        return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)

    _, _, masks = paste_batch(images, labels, source, np.random.default_rng(0), patches_per_image=2)
    assert calls == [12]
    assert masks.reshape(6, -1).any(axis=1).all()
    _, _, masks0 = paste_batch(images, labels, source, np.random.default_rng(0), probability=0.0)
    assert not masks0.any()
