"""The shipped base segmentation model, its loading checks, the training augmentation and `seg train-base`.

The base is what the demo, the effect experiment and the synthesis job fine-tune from, so these tests pin what
models/README.md promises: it loads through the normal checks (fp16 on disk, float32 in memory), its manifest says
how it was made, a corrupted copy is refused, and it really segments held-out scenes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from flow_anomaly_ros.model_store import ModelFileError, read_manifest
from flow_anomaly_ros.segmentation.augment import color_jitter, random_crop, scale_pair
from flow_anomaly_ros.segmentation.base_model import BASE_MODEL_NAME, default_base_model, measure_miou

SHIPPED = default_base_model()


def test_the_base_model_ships_in_models_with_its_manifest():
    assert SHIPPED.name == BASE_MODEL_NAME and SHIPPED.parent.name == "models"
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size <= 25 * 1024 * 1024, size
    manifest = read_manifest(SHIPPED, expected_kind="segmentation")
    base = manifest["base_model"]
    assert base["backbone"] == "mobilenet_v3_large" and base["weights_dtype"] == "float16"
    assert len(base["classes"]) == 20 and base["classes"][-1] == "anomaly"
    assert base["training"]["steps"] > 0 and base["training"]["data_seed"] == 0
    assert base["training"]["config"]["patches"]["per_image"] == 0  # no negatives in the base
    assert 0.0 < base["measured"]["miou"] <= 1.0 and base["measured"]["per_class_iou"]["road"] > 0.9
    assert len(manifest["weights_sha256"]) == 64


def test_the_shipped_weights_are_fp16_on_disk_and_float32_after_loading():
    import torch
    from safetensors.numpy import load_file

    from flow_anomaly_ros.segmentation.model import load_segmentation_model

    raw = load_file(str(SHIPPED / "weights.safetensors"))
    floats = [v for v in raw.values() if v.dtype.kind == "f"]
    assert floats and all(v.dtype == np.float16 for v in floats)
    model, spec, _ = load_segmentation_model(SHIPPED)
    assert spec.backbone == "mobilenet_v3_large" and spec.num_classes == 20
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_corrupted_copy_of_the_base_is_refused(tmp_path):
    from flow_anomaly_ros.segmentation.model import load_segmentation_model

    copy = tmp_path / "base"
    shutil.copytree(SHIPPED, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_segmentation_model(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        load_segmentation_model(copy)


def test_the_base_segments_held_out_scenes():
    # four scenes never drawn in training (seed 10 000 + a different index range than the model card's 32)
    report = measure_miou(SHIPPED, num_images=4, size=(256, 512), seed=12_345)
    assert report["per_class_iou"]["road"] > 0.9 and report["per_class_iou"]["sky"] > 0.9
    assert report["miou"] > 0.5, report


def test_augmentation_keeps_labels_exact_and_sizes_right():
    from flow_anomaly_ros.data.street_scenes import generate_scene

    scene = generate_scene(64, 128, seed=1)
    img, lbl = scale_pair(scene.image, scene.label, 1.5)
    assert img.shape == (96, 192, 3) and lbl.shape == (96, 192)
    assert set(np.unique(lbl)) <= set(np.unique(scene.label))  # nearest neighbour: no invented classes
    rng = np.random.default_rng(0)
    ci, cl = random_crop(img, lbl, (80, 100), rng)
    assert ci.shape == (80, 100, 3) and cl.shape == (80, 100)
    _, pl = random_crop(scene.image, scene.label, (80, 160), rng)  # smaller than the crop: padded with ignore
    assert pl.shape == (80, 160) and (pl[64:] == 255).all()
    assert color_jitter(scene.image, 0.0, rng) is scene.image
    jittered = color_jitter(scene.image, 0.3, rng)
    assert jittered.dtype == np.uint8 and jittered.shape == scene.image.shape and (jittered != scene.image).any()


def test_training_batches_are_augmented_crops(tmp_path):
    from flow_anomaly_ros.segmentation.config import FinetuneConfig
    from flow_anomaly_ros.segmentation.finetune import TrainingImages

    cfg = FinetuneConfig.from_dict({"data": {"crop": [64, 128], "scene_size": [64, 128], "scale": [1.0, 2.0],
                                             "color_jitter": 0.3, "num_scenes": 10}})  # fmt: skip
    images, labels = TrainingImages(cfg).batch(np.random.default_rng(0), 3)
    assert images.shape == (3, 64, 128, 3) and labels.shape == (3, 64, 128)
    again, _ = TrainingImages(cfg).batch(np.random.default_rng(0), 3)
    assert (again == images).all()  # a function of the rng: resumed runs see the same batches
    with pytest.raises(ValueError, match=r"data\.scale"):
        FinetuneConfig.from_dict({"data": {"scale": [2.0, 1.0]}})


def test_train_base_cli_trains_resumes_and_ships_fp16(tmp_path):
    import yaml

    cfg = yaml.safe_load((SHIPPED.parents[1] / "config" / "segmentation_base.yaml").read_text())
    cfg["data"].update(scene_size=[64, 128], crop=[48, 96], num_scenes=20)
    cfg["train"].update(steps=2, batch_size=2, threads=1)
    cfg["validation"].update(every=2, num_images=1, size=[64, 128])
    cfg["output"].update(dir=str(tmp_path / "run"), checkpoint_every=1)
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "flow_anomaly_ros.cli", "seg", "train-base", str(path), "--quiet",
           "--measure-scenes", "1", "--ship", str(tmp_path / "shipped")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout[out.stdout.index("{\n") :])  # after the validation lines
    assert report["steps"] == 2 and 0.0 <= report["measured"]["miou"] <= 1.0
    shipped = read_manifest(tmp_path / "shipped")
    assert shipped["base_model"]["weights_dtype"] == "float16" and shipped["base_model"]["training"]["steps"] == 2
    # with negatives configured it refuses: a base network trains on inliers only
    cfg["patches"] = {"per_image": 1, "probability": 1.0}
    path.write_text(yaml.safe_dump(cfg))
    bad = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "per_image: 0" in bad.stderr
