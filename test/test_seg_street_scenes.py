"""Procedural street scenes: exact trainId labels, seeded, any size, anomalies of kinds never seen in normal scenes."""

from __future__ import annotations

import numpy as np
import pytest

from flow_anomaly_ros.data.street_scenes import (
    ANOMALY_KINDS,
    CAR,
    ROAD,
    SIDEWALK,
    SKY,
    StreetSceneDataset,
    generate_scene,
)
from flow_anomaly_ros.segmentation.classes import ANOMALY_ID


def test_same_seed_gives_the_same_scene_and_other_seeds_differ():
    a, b, c = generate_scene(64, 128, seed=7), generate_scene(64, 128, seed=7), generate_scene(64, 128, seed=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (33, 47), (64, 128), (200, 120), (256, 512)])
def test_any_size_gives_matching_uint8_image_and_label(h, w):
    s = generate_scene(h, w, seed=1, num_anomalies=1)
    assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (h, w) and s.label.dtype == np.uint8
    assert s.anomaly_mask.shape == (h, w) and s.anomaly_mask.dtype == bool


def test_labels_are_cityscapes_train_ids_and_normal_scenes_have_no_anomaly():
    seen: set[int] = set()
    for seed in range(12):
        s = generate_scene(96, 192, seed=seed)
        assert not s.anomaly_mask.any() and s.anomaly_kinds == []
        values = set(np.unique(s.label).tolist())
        assert values <= set(range(19)), values
        assert {ROAD, SKY} <= values
        seen |= values
    assert {0, 1, 2, 5, 8, 10, 11, 13} <= seen  # road sidewalk building pole vegetation sky person car
    assert {6, 7} & seen  # traffic lights or signs


def test_classes_look_like_what_they_are():
    s = generate_scene(128, 256, seed=4)
    img = s.image.astype(float)
    sky = img[s.label == SKY].mean(0)
    road = img[s.label == ROAD].mean(0)
    assert sky[2] > sky[0] + 30  # blue
    assert abs(road[0] - road[2]) < 20 and 70 < road.mean() < 130  # grey
    assert (s.label[-1] == ROAD).any() and (s.label[0] == SKY).any()  # road at the bottom, sky at the top
    assert (s.label == SIDEWALK).any() and (s.label == CAR).any()


def test_anomalies_are_labelled_19_and_match_the_mask():
    hits = 0
    for seed in range(8):
        s = generate_scene(128, 256, seed=seed, num_anomalies=2)
        assert len(s.anomaly_kinds) == 2 and set(s.anomaly_kinds) <= set(ANOMALY_KINDS)
        assert np.array_equal(s.anomaly_mask, s.label == ANOMALY_ID)
        hits += int(s.anomaly_mask.sum() > 0)
    assert hits >= 7  # visible (rarely one is fully hidden behind a nearer car)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_every_anomaly_kind_renders_on_the_road(kind):
    pixels = sum(int(generate_scene(128, 256, seed=s, num_anomalies=1, anomaly_kinds=[kind]).anomaly_mask.sum())
                 for s in range(3))  # fmt: skip
    assert pixels > 20


def test_a_scene_with_anomalies_equals_its_normal_twin_outside_the_anomaly_mask():
    for seed in range(4):
        normal = generate_scene(96, 192, seed=seed)
        with_anomaly = generate_scene(96, 192, seed=seed, num_anomalies=2)
        visible = ~with_anomaly.anomaly_mask
        assert np.array_equal(normal.label[visible], with_anomaly.label[visible])
        assert np.array_equal(normal.image[visible], with_anomaly.image[visible])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="at least 32x32"):
        generate_scene(16, 64)
    with pytest.raises(ValueError, match="anomaly_kinds"):
        generate_scene(64, 64, num_anomalies=1, anomaly_kinds=["car"])
    with pytest.raises(ValueError, match="num_anomalies"):
        generate_scene(64, 64, num_anomalies=-1)


def test_dataset_is_indexable_deterministic_and_holds_the_requested_anomaly_fraction():
    ds = StreetSceneDataset(20, 48, 96, seed=5, anomaly_fraction=0.5)
    assert len(ds) == 20
    assert np.array_equal(ds[3].label, StreetSceneDataset(20, 48, 96, seed=5, anomaly_fraction=0.5)[3].label)
    assert np.array_equal(ds[-1].image, ds[19].image)
    with_anomalies = sum(bool(s.anomaly_kinds) for s in ds)
    assert 4 <= with_anomalies <= 16
    with pytest.raises(IndexError):
        ds[20]
