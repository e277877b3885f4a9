"""build_model: DeepLabV3 + anomaly class, local checkpoint initialisation, model directories, clear errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import mobilenet_v3_large
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from flow_anomaly_ros.model_store import ModelFileError, read_manifest
from flow_anomaly_ros.segmentation import (
    SegmentationSpec,
    build_model,
    load_segmentation_model,
    save_segmentation_model,
)
from flow_anomaly_ros.segmentation.model import ANOMALY_INIT_OFFSET

MBV3 = "mobilenet_v3_large"


def _perturb_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial statistics so outputs are not near zero."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet50", "resnet101"])
def test_every_backbone_outputs_19_inlier_classes_plus_anomaly_at_input_resolution(backbone):
    model = build_model(backbone).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 48))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 20, 32, 48)
    assert model.num_classes == 20 and model.backbone_name == backbone


def test_default_backbone_is_the_papers_resnet101():
    import inspect

    assert inspect.signature(build_model).parameters["backbone"].default == "resnet101"


def test_unknown_backbone_error_lists_the_choices():
    with pytest.raises(ValueError, match="resnet101, resnet50, mobilenet_v3_large"):
        build_model("vgg16")


def test_bad_class_count_is_rejected():
    with pytest.raises(ValueError, match="num_inlier_classes"):
        build_model(MBV3, num_inlier_classes=0)


def test_init_from_19_class_checkpoint_keeps_inlier_head_and_never_changes_the_argmax(tmp_path):
    torch.manual_seed(0)
    ref = _perturb_bn(deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19)).eval()
    ckpt = tmp_path / "cityscapes.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, ckpt)
    model = build_model(MBV3, weights_path=ckpt).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = ref(x)["out"]
        logits = model(x)
    torch.testing.assert_close(logits[:, :19], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits[:, 19], expected.mean(1) - ANOMALY_INIT_OFFSET, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_init_from_full_20_class_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    src = _perturb_bn(build_model(MBV3)).eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = build_model(MBV3, weights_path=path).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))


def test_imagenet_backbone_weights_initialise_the_backbone_only(tmp_path):
    cls = mobilenet_v3_large(weights=None)
    path = tmp_path / "imagenet.pth"
    torch.save(cls.state_dict(), path)
    model = build_model(MBV3, weights_path=path)
    torch.testing.assert_close(model.backbone["0"][0].weight, cls.features[0][0].weight)


def test_missing_checkpoint_says_it_is_never_downloaded(tmp_path):
    with pytest.raises(ModelFileError, match="never downloaded"):
        build_model(MBV3, weights_path=tmp_path / "nope.pth")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module needs unpickling
    with pytest.raises(ModelFileError, match="weights_only"):
        build_model(MBV3, weights_path=path)


def test_checkpoint_of_another_backbone_is_a_clear_error(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(build_model("resnet50").state_dict(), path)
    with pytest.raises(ModelFileError, match="another backbone"):
        build_model(MBV3, weights_path=path)


def test_head_with_wrong_class_count_is_a_clear_error(tmp_path):
    state = build_model(MBV3).state_dict()
    state["classifier.4.weight"] = state["classifier.4.weight"][:7]
    state["classifier.4.bias"] = state["classifier.4.bias"][:7]
    path = tmp_path / "k7.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="7 classes"):
        build_model(MBV3, weights_path=path)


def test_model_directory_round_trip_keeps_outputs_and_manifest(tmp_path):
    model = _perturb_bn(build_model(MBV3)).eval()
    spec = SegmentationSpec(backbone=MBV3, input_size=(64, 128))
    save_segmentation_model(tmp_path / "seg", model, spec)
    manifest = read_manifest(tmp_path / "seg")
    assert manifest["kind"] == "segmentation/deeplabv3"
    assert manifest["class_names"][19] == "anomaly" and manifest["class_names"][0] == "road"
    assert manifest["anomaly_index"] == 19 and manifest["ignore_index"] == 255
    assert manifest["mean"] == [0.485, 0.456, 0.406] and manifest["input_size"] == [64, 128]
    loaded, loaded_spec, _ = load_segmentation_model(tmp_path / "seg")
    assert loaded_spec == spec
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # a model directory is also a valid weights_path for build_model
    again = build_model(MBV3, weights_path=tmp_path / "seg").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_spec_validation_names_the_field():
    with pytest.raises(ValueError, match="score_method"):
        SegmentationSpec(backbone=MBV3, score_method="entropy")
    with pytest.raises(ValueError, match="no threshold for score method 'energy'"):
        SegmentationSpec(backbone=MBV3).threshold_for("energy")
