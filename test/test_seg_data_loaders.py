"""Cityscapes and anomaly-benchmark loaders on small data written in exactly the published layouts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flow_anomaly_ros.data.anomaly_benchmarks import LAYOUTS, AnomalyBenchmark, write_benchmark_layout
from flow_anomaly_ros.data.cityscapes import CityscapesDataset, write_cityscapes_layout
from flow_anomaly_ros.data.street_scenes import generate_scene


def _scenes(n, anomalies=0):
    return [generate_scene(48, 96, seed=i, num_anomalies=anomalies) for i in range(n)]


def test_cityscapes_layout_round_trip_maps_label_ids_to_train_ids(tmp_path):
    scenes = _scenes(3)
    write_cityscapes_layout(tmp_path, [(s.image, s.label) for s in scenes], split="val", city="bremen")
    assert (tmp_path / "leftImg8bit/val/bremen/bremen_000000_000019_leftImg8bit.png").is_file()
    raw = np.asarray(Image.open(tmp_path / "gtFine/val/bremen/bremen_000000_000019_gtFine_labelIds.png"))
    assert 7 in raw and 23 in raw  # road and sky labelIds on disk
    ds = CityscapesDataset(tmp_path, split="val")
    assert len(ds) == 3
    for (image, label), s in zip(ds, scenes):
        assert np.array_equal(image, s.image) and np.array_equal(label, s.label)


def test_official_label_ids_outside_the_19_classes_become_ignore(tmp_path):
    write_cityscapes_layout(tmp_path, [(s.image, s.label) for s in _scenes(1)])
    lbl_path = next((tmp_path / "gtFine/train/synthcity").glob("*_labelIds.png"))
    raw = np.asarray(Image.open(lbl_path)).copy()
    raw[:4] = 1  # ego vehicle
    raw[4:6] = 9  # parking
    raw[6, :5] = 33  # bicycle -> trainId 18
    Image.fromarray(raw).save(lbl_path)
    _, label = CityscapesDataset(tmp_path)[0]
    assert np.all(label[:6] == 255) and np.all(label[6, :5] == 18)


def test_train_id_files_are_used_when_label_ids_are_absent(tmp_path):
    scenes = _scenes(1)
    write_cityscapes_layout(tmp_path, [(s.image, s.label) for s in scenes])
    lbl_path = next((tmp_path / "gtFine/train/synthcity").glob("*_labelIds.png"))
    Image.fromarray(scenes[0].label).save(str(lbl_path).replace("_labelIds", "_labelTrainIds"))
    lbl_path.unlink()
    assert np.array_equal(CityscapesDataset(tmp_path)[0][1], scenes[0].label)


def test_cityscapes_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train"):
        CityscapesDataset(tmp_path)
    write_cityscapes_layout(tmp_path, [(s.image, s.label) for s in _scenes(1)])
    next((tmp_path / "gtFine/train/synthcity").glob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="no gtFine label"):
        CityscapesDataset(tmp_path)
    with pytest.raises(ValueError, match="split"):
        CityscapesDataset(tmp_path, split="training")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_anomaly_benchmark_layouts_round_trip_with_void(tmp_path, layout):
    scenes = _scenes(2, anomalies=2)
    oods = []
    for s in scenes:
        ood = s.anomaly_mask.astype(np.uint8)
        ood[:5] = 255  # a void band, as the benchmarks have
        oods.append(ood)
    write_benchmark_layout(tmp_path, [(s.image, o) for s, o in zip(scenes, oods)], layout)
    ds = AnomalyBenchmark(tmp_path)  # layout detected
    assert ds.layout == layout and len(ds) == 2
    for (image, ood), s, expected in zip(ds, scenes, oods):
        assert image.shape == s.image.shape and image.dtype == np.uint8
        if layout == "fishyscapes":
            assert np.array_equal(image, s.image)  # PNG: exact; the others ship JPEG
        assert np.array_equal(ood, expected)
        assert set(np.unique(ood)) <= {0, 1, 255} and (ood == 1).any()


def test_road_anomaly_uses_value_2_for_anomalies_on_disk(tmp_path):
    s = _scenes(1, anomalies=2)[0]
    write_benchmark_layout(tmp_path, [(s.image, s.anomaly_mask.astype(np.uint8))], "road_anomaly")
    raw = np.asarray(Image.open(tmp_path / "frames/validation0000.labels/labels_semantic.png"))
    assert set(np.unique(raw)) == {0, 2}


def test_benchmark_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a known anomaly-benchmark layout"):
        AnomalyBenchmark(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels_masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match="label files missing"):
        AnomalyBenchmark(tmp_path)
    with pytest.raises(ValueError, match="layout"):
        AnomalyBenchmark(tmp_path, layout="lostandfound")
