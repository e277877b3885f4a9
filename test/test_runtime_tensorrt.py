"""TensorRT: the engine cache (runs everywhere) and the native backend (runs where ``import tensorrt`` works)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from flow_anomaly_ros.runtime import engine_cache, load_backend
from flow_anomaly_ros.runtime.tensorrt_backend import shape_profile
from flow_anomaly_ros.segmentation.spec import SegmentationSpec

PROFILE = ((1, 3, 64, 128), (1, 3, 64, 128), (1, 3, 64, 128))
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"pretend network v1")  # the cache only hashes the file
    return path


def test_key_depends_on_network_version_gpu_precision_and_shapes(onnx_file, tmp_path):
    base = engine_cache.make_key(onnx_file, "10.3.0", "Orin", "fp16", PROFILE)
    variants = [
        engine_cache.make_key(onnx_file, "10.4.0", "Orin", "fp16", PROFILE),
        engine_cache.make_key(onnx_file, "10.3.0", "NVIDIA RTX 4090", "fp16", PROFILE),
        engine_cache.make_key(onnx_file, "10.3.0", "Orin", "int8", PROFILE),
        engine_cache.make_key(onnx_file, "10.3.0", "Orin", "fp16", ((1, 3, 64, 64),) * 3),
    ]
    other = tmp_path / "other.onnx"
    other.write_bytes(b"pretend network v2")
    variants.append(engine_cache.make_key(other, "10.3.0", "Orin", "fp16", PROFILE))
    paths = {engine_cache.engine_path(onnx_file, k).name for k in [base, *variants[:-1]]}
    assert len(paths) == 5 and len({k.digest() for k in [base, *variants]}) == 6
    assert engine_cache.engine_path(onnx_file, base).parent == onnx_file.parent  # cached next to the ONNX


def test_engine_is_built_once_then_loaded_from_the_cache(onnx_file):
    key = engine_cache.make_key(onnx_file, "10.3.0", "Orin", "fp16", PROFILE)
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"engine-bytes"

    data, path, built = engine_cache.get_or_build(onnx_file, key, build)
    assert built and data == b"engine-bytes" and path.is_file() and len(builds) == 1
    data2, path2, built2 = engine_cache.get_or_build(onnx_file, key, build)
    assert not built2 and data2 == data and path2 == path and len(builds) == 1
    assert engine_cache.cached_engines(onnx_file) == [path]


def test_new_onnx_or_tensorrt_version_rebuilds_but_keeps_other_engines(onnx_file):
    build = lambda: b"e"  # noqa: E731
    key_103 = engine_cache.make_key(onnx_file, "10.3", "Orin", "fp16", PROFILE)
    _, first, _ = engine_cache.get_or_build(onnx_file, key_103, build)
    _, second, built = engine_cache.get_or_build(
        onnx_file, engine_cache.make_key(onnx_file, "10.4", "Orin", "fp16", PROFILE), build
    )
    assert built and second != first and first.is_file()
    onnx_file.write_bytes(b"re-exported network")
    _, third, built = engine_cache.get_or_build(
        onnx_file, engine_cache.make_key(onnx_file, "10.4", "Orin", "fp16", PROFILE), build
    )
    assert built and third not in (first, second)


def test_corrupt_or_mismatched_cache_entries_are_rebuilt(onnx_file):
    key = engine_cache.make_key(onnx_file, "10.3", "Orin", "fp16", PROFILE)
    _, path, _ = engine_cache.get_or_build(onnx_file, key, lambda: b"good")
    _, _, built = engine_cache.get_or_build(onnx_file, key, lambda: b"good2", validate=lambda b: False)
    assert built and path.read_bytes() == b"good2"
    path.with_suffix(".engine.json").write_text("{not json")
    _, _, built = engine_cache.get_or_build(onnx_file, key, lambda: b"good3")
    assert built
    _, _, built = engine_cache.get_or_build(onnx_file, key, lambda: b"x", force_rebuild=True)
    assert built
    with pytest.raises(RuntimeError, match="returned nothing"):
        engine_cache.get_or_build(onnx_file, key, lambda: b"", force_rebuild=True)


def test_shape_profile_is_fixed_for_models_with_an_input_size_and_padded():
    fixed = shape_profile(SegmentationSpec(backbone="mobilenet_v3_large", input_size=(500, 1000)), max_batch=4)
    assert fixed == ((1, 3, 512, 1008), (1, 3, 512, 1008), (4, 3, 512, 1008))
    dyn = shape_profile(SegmentationSpec(backbone="mobilenet_v3_large"), opt_hw=(512, 1024), max_hw=(1024, 2048))
    assert dyn == ((1, 3, 256, 256), (1, 3, 512, 1024), (1, 3, 1024, 2048))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        shape_profile(SegmentationSpec(backbone="mobilenet_v3_large"), opt_hw=(512, 1024), max_hw=(256, 512))


@pytest.mark.skipif(HAVE_TRT, reason="checks the error where the tensorrt module is missing")
def test_tensorrt_kind_without_tensorrt_names_the_missing_module(tmp_path):
    with pytest.raises(RuntimeError, match="TensorRT Python package not importable"):
        load_backend("tensorrt", tmp_path, device="cuda")


def _trt_skip_reason() -> str | None:
    if not HAVE_TRT:
        return "module 'tensorrt' is not importable (TensorRT is not installable on this machine)"
    if not _cuda():
        return "TensorRT needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


@pytest.mark.skipif(_trt_skip_reason() is not None, reason=str(_trt_skip_reason()))
def test_tensorrt_engine_matches_onnxruntime_and_is_cached(tmp_path):
    from test_runtime_backends import make_model_dir, scenes

    from flow_anomaly_ros.runtime.export import export_onnx

    d = make_model_dir(tmp_path / "m", input_size=(64, 128))
    export_onnx(d)
    images = scenes(1, 64, 128)
    ort = load_backend("onnxruntime", d).infer(images)
    trt = load_backend("tensorrt", d, device="cuda", precision="fp16")
    assert trt.built_now
    logits = trt.infer(images)
    assert np.mean(logits.argmax(1) == ort.argmax(1)) >= 0.99
    again = load_backend("tensorrt", d, device="cuda", precision="fp16")
    assert not again.built_now and again.engine_path == trt.engine_path
