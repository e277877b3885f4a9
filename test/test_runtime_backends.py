"""Runtime backends on a real exported model: torch and ONNX Runtime agree, load_backend picks and explains."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import onnx
import pytest
import torch

from flow_anomaly_ros.data.street_scenes import generate_scene
from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.runtime import load_backend
from flow_anomaly_ros.runtime.export import export_onnx, parity_check
from flow_anomaly_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
from flow_anomaly_ros.runtime.torch_backend import TorchBackend
from flow_anomaly_ros.segmentation import SegmentationSpec, build_model, save_segmentation_model
from flow_anomaly_ros.segmentation.spec import ONNX_METADATA_KEY

MBV3 = "mobilenet_v3_large"


def make_model_dir(path, backbone=MBV3, seed=0, **spec_kw):
    """An untrained model with non-trivial BatchNorm statistics and head, so logits span several units."""
    torch.manual_seed(seed)
    model = build_model(backbone).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    with torch.no_grad():
        model.classifier[4].weight.mul_(20.0)
    return save_segmentation_model(path, model, SegmentationSpec(backbone=backbone, **spec_kw))


def scenes(n, h, w, seed=0):
    return np.stack([generate_scene(h, w, seed=seed + i, num_anomalies=1).image for i in range(n)])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp("seg") / "mbv3")
    export_onnx(d)
    return d


def test_export_passes_checker_with_dynamic_axes_and_embedded_spec(model_dir):
    proto = onnx.load(str(model_dir / "model.onnx"))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["N", "", "H", "W"] and dims[1].dim_value == 3
    meta = {p.key: p.value for p in proto.metadata_props}
    assert SegmentationSpec.from_manifest(__import__("json").loads(meta[ONNX_METADATA_KEY])).backbone == MBV3


def test_onnxruntime_matches_torch_on_street_scenes(model_dir):
    report = parity_check(model_dir, scenes(2, 64, 128))
    assert report["shape"] == [2, 20, 64, 128]
    assert report["max_rel_diff"] < 1e-4, report
    assert report["argmax_agreement"] >= 0.999, report


def test_dynamic_batch_and_sizes_including_padding(model_dir):
    backend = OnnxRuntimeBackend(model_dir)
    for n, h, w in [(1, 64, 128), (3, 48, 96), (1, 50, 70)]:
        logits = backend.infer(scenes(n, h, w))
        assert logits.shape == (n, 20, h, w) and logits.dtype == np.float32


def test_infer_accepts_single_images_and_predict_returns_maps_at_image_size(model_dir):
    backend = load_backend("onnxruntime", model_dir)
    img = scenes(1, 60, 100)[0]
    assert backend.infer(img).shape == (1, 20, 60, 100)
    pred = backend.predict(img, method="energy", threshold=-5.0)
    assert pred.classes.shape == (1, 60, 100) and pred.classes.dtype == np.uint8
    assert pred.scores.shape == (1, 60, 100) and pred.scores.dtype == np.float32
    np.testing.assert_array_equal(pred.anomaly_mask, pred.scores >= -5.0)
    with pytest.raises(ValueError, match="no threshold"):
        backend.predict(img, method="energy")
    with pytest.raises(TypeError, match="uint8"):
        backend.infer(img.astype(np.float32))


def test_model_input_size_resizes_and_predict_maps_back(tmp_path):
    d = make_model_dir(tmp_path / "fixed", input_size=(64, 128))
    backend = load_backend("torch", d)
    img = scenes(1, 100, 200)[0]
    assert backend.infer(img).shape == (1, 20, 64, 128)
    assert backend.predict(img).scores.shape == (1, 100, 200)


def test_onnx_file_alone_carries_its_description(model_dir, tmp_path):
    alone = tmp_path / "elsewhere" / "seg.onnx"
    alone.parent.mkdir()
    shutil.copy(model_dir / "model.onnx", alone)
    backend = load_backend("onnxruntime", alone)
    assert backend.spec.backbone == MBV3 and backend.spec.class_names[19] == "anomaly"


def test_onnx_without_metadata_or_manifest_is_refused(model_dir, tmp_path):
    proto = onnx.load(str(model_dir / "model.onnx"))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelFileError, match="cannot tell its classes"):
        load_backend("onnxruntime", bare)


def test_stale_onnx_after_retraining_is_refused(tmp_path):
    d = make_model_dir(tmp_path / "m", seed=1)
    export_onnx(d)
    onnx_bytes = (d / "model.onnx").read_bytes()
    make_model_dir(d, seed=2)  # new weights replace the directory
    (d / "model.onnx").write_bytes(onnx_bytes)
    with pytest.raises(ModelFileError, match="stale export"):
        load_backend("onnxruntime", d)


def test_missing_onnx_says_how_to_export(tmp_path):
    d = make_model_dir(tmp_path / "noexport")
    with pytest.raises(ModelFileError, match="flow-anomaly seg export"):
        load_backend("onnxruntime", d)


def test_auto_on_cpu_prefers_onnxruntime_and_logs_why(model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="flow_anomaly_ros.runtime.loader"):
        backend = load_backend("auto", model_dir, device="cpu")
    assert backend.kind == "onnxruntime"
    assert backend.selection[0] == ("tensorrt:cuda:fp32", "skipped: device='cpu' requested")
    assert "onnxruntime:CPU:fp32 -> chosen" in caplog.text


def test_auto_falls_back_to_torch_when_there_is_no_onnx(tmp_path):
    d = make_model_dir(tmp_path / "torchonly")
    backend = load_backend("auto", d, device="cpu")
    assert backend.kind == "torch"
    reasons = dict(backend.selection)
    assert "flow-anomaly seg export" in reasons["onnxruntime:cpu:fp32"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback chain on a machine without a GPU")
def test_auto_with_cuda_requested_explains_each_gpu_fallback(model_dir):
    backend = load_backend("auto", model_dir, device="cuda", precision="fp16")
    assert backend.kind == "onnxruntime" and backend.device == "cpu"
    reasons = dict(backend.selection)
    assert "unavailable" in reasons["tensorrt:cuda:fp16"] and "unavailable" in reasons["onnxruntime:cuda:fp32"]
    assert "fp16 not supported here" in backend.selection[-1][1]


def test_explicit_backends_fail_clearly(model_dir):
    with pytest.raises(ValueError, match="unknown backend kind"):
        load_backend("openvino", model_dir)
    with pytest.raises(ValueError, match="precision"):
        load_backend("onnxruntime", model_dir, precision="int4")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        TorchBackend.from_path(model_dir, precision="fp16")
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(RuntimeError, match="no CUDAExecutionProvider"):
            OnnxRuntimeBackend(model_dir, device="cuda")
