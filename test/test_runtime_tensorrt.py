"""TensorRT: the engine cache (runs everywhere) and the native backend (runs where ``import tensorrt`` works)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from flow_anomaly_ros.runtime import engine_cache, load_backend
from flow_anomaly_ros.runtime.tensorrt_plan import (
    TensorRTVersionError,
    build_plan,
    engine_options,
    engine_profile,
    shape_hint,
)
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


MBV3_SPEC = dict(backbone="mobilenet_v3_large")
# BuilderFlag / NetworkDefinitionCreationFlag members in NVIDIA/TensorRT python/src/infer/pyCore.cpp
# (release/10.13 and main = 11.1): what each version's plan may use
TRT_ENUMS = {
    10: {"builder": {"FP16", "BF16", "INT8", "TF32", "FP8", "INT4", "FP4", "STRICT_NANS"},
         "network": {"EXPLICIT_BATCH", "STRONGLY_TYPED"}},
    11: {"builder": {"TF32", "STRICT_NANS", "DEBUG", "REFIT", "SPARSE_WEIGHTS"}, "network": {"STRONGLY_TYPED"}},
}  # fmt: skip


def test_shape_profile_is_fixed_for_models_with_an_input_size_and_padded():
    fixed = engine_profile(SegmentationSpec(**MBV3_SPEC, input_size=(500, 1000)), max_batch=4)
    assert fixed == ((1, 3, 512, 1008), (1, 3, 512, 1008), (4, 3, 512, 1008))
    camera = engine_profile(SegmentationSpec(**MBV3_SPEC), shape=(1080, 1920))  # exactly the camera's frames
    assert camera == ((1, 3, 1088, 1920),) * 3
    wider = engine_profile(SegmentationSpec(**MBV3_SPEC), shape=(512, 1024), max_shape=(1024, 2048))
    assert wider == ((1, 3, 512, 1024), (1, 3, 512, 1024), (1, 3, 1024, 2048))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        engine_profile(SegmentationSpec(**MBV3_SPEC), shape=(512, 1024), max_shape=(256, 512))


def test_default_profile_takes_full_hd_and_small_frames():
    """Without input_size or engine_shape the node's engine must take a 1920x1080 camera and frames under 256 px
    (the old 256..1024x2048 profile raised on every such frame while the 480x640 warm-up passed)."""
    from flow_anomaly_ros.runtime.preprocess import preprocess

    spec = SegmentationSpec(**MBV3_SPEC)
    lo, opt, hi = engine_profile(spec)
    assert opt[2:] == (1088, 1920)
    for h, w in ((1080, 1920), (200, 300), (480, 640), (2160, 3840), (32, 32)):
        shape = preprocess(np.zeros((1, h, w, 3), np.uint8), spec.mean, spec.std, None, spec.pad_multiple).batch.shape
        assert all(a <= b <= c for a, b, c in zip(lo, shape, hi)), (h, w, shape)


def test_build_plan_per_tensorrt_version_uses_only_that_versions_api():
    p10, p11 = build_plan("10.3.0.26", "fp16"), build_plan("11.1.0", "fp16")
    assert p10.builder_flags == ("FP16",) and p10.onnx_variant == "fp32" and not p10.strongly_typed
    assert p11.builder_flags == () and p11.onnx_variant == "fp16" and p11.strongly_typed  # no BuilderFlag.FP16
    for version in ("10.0.1", "10.13.3", "11.0.0", "11.1.0"):
        for precision in ("fp32", "fp16", "int8"):
            plan = build_plan(version, precision)
            assert set(plan.builder_flags) <= TRT_ENUMS[plan.major]["builder"], (version, precision)
            assert set(plan.network_flags) <= TRT_ENUMS[plan.major]["network"], (version, precision)
            if precision == "int8":  # explicit quantisation: no calibrator (gone in 11), strongly typed
                assert plan.onnx_variant == "int8-qdq" and plan.strongly_typed and not plan.builder_flags
    for unsupported in ("8.6.1", "9.3.0", "12.0.0", "garbage"):
        with pytest.raises(TensorRTVersionError, match=rf"TensorRT {unsupported} is not supported.*10\.x and 11\.x"):
            build_plan(unsupported, "fp16")


def test_engine_file_names_the_tensorrt_major_version(onnx_file):
    key10 = engine_cache.make_key(onnx_file, "10.3.0", "Orin", "fp16", PROFILE)
    key11 = engine_cache.make_key(onnx_file, "11.1.0", "Orin", "fp16", PROFILE)
    assert ".fp16.trt10." in engine_cache.engine_path(onnx_file, key10).name
    assert ".fp16.trt11." in engine_cache.engine_path(onnx_file, key11).name
    assert key10.digest() != key11.digest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from test_runtime_backends import make_model_dir

    from flow_anomaly_ros.runtime.export import export_onnx

    d = make_model_dir(tmp_path_factory.mktemp("trt") / "m")
    export_onnx(d)
    return d


@pytest.mark.parametrize(
    ("cli", "node"),
    [
        ([], {"input_size": [0, 0], "engine_shape": [0, 0]}),
        (["--shape", "1080x1920"], {"input_size": [0, 0], "engine_shape": [1080, 1920]}),
        (["--input-size", "256x512"], {"input_size": [256, 512], "engine_shape": [0, 0]}),
        (["--input-size", "256x512", "--shape", "720x1280"], {"input_size": [256, 512], "engine_shape": [720, 1280]}),
    ],
)
def test_seg_build_engine_writes_the_key_the_camera_node_asks_for(exported, cli, node):
    """No TensorRT needed: the key is computed from the ONNX, the version string, the GPU name and the options."""
    from flow_anomaly_ros.cli import build_parser
    from flow_anomaly_ros.runtime.tensorrt_backend import engine_key_for
    from flow_anomaly_ros.segmentation.cli import build_engine_options

    args = build_parser().parse_args(["seg", "build-engine", str(exported), "--precision", "fp16", *cli])
    from_cli = engine_key_for(exported, "11.1.0", "NVIDIA H100", args.precision, **build_engine_options(args))
    from_node = engine_key_for(
        exported, "11.1.0", "NVIDIA H100", "fp16", **engine_options(node["input_size"], node["engine_shape"])
    )
    assert from_cli == from_node
    if cli:
        default = engine_key_for(exported, "11.1.0", "NVIDIA H100", "fp16", **engine_options())
        assert default.digest() != from_cli.digest()
    # the flags named in the node's out-of-profile error rebuild exactly this profile
    again = ["seg", "build-engine", str(exported), *shape_hint(from_node.profile).split()]
    if "--input-size" not in cli:
        hinted = build_engine_options(build_parser().parse_args(again))
        assert engine_key_for(exported, "11.1.0", "NVIDIA H100", "fp16", **hinted) == from_node


def test_fp16_and_qdq_onnx_for_strongly_typed_builds_run_and_agree(exported):
    """The ONNX files TensorRT 11 builds FP16 / INT8 engines from are real models: ONNX Runtime runs them."""
    import onnx
    import onnxruntime as ort
    from test_runtime_backends import scenes

    from flow_anomaly_ros.runtime.model_files import find_onnx, read_onnx_metadata, spec_from_metadata
    from flow_anomaly_ros.runtime.tensorrt_onnx import fp16_onnx, qdq_int8_onnx

    onnx_path = find_onnx(exported)
    spec = spec_from_metadata(read_onnx_metadata(onnx_path), onnx_path)
    images = scenes(3, 64, 128)
    reference = load_backend("onnxruntime", exported)
    batch = reference.preprocess(images).batch
    expected = reference.infer(images).argmax(1)
    f16, qdq = fp16_onnx(onnx_path), qdq_int8_onnx(onnx_path, spec, list(images), (64, 128))
    assert fp16_onnx(onnx_path) == f16 and f16.name.startswith("model.fp16.")  # cached, named by the ONNX hash
    for path, agreement in ((f16, 0.99), (qdq, 0.8)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {"images": batch})[0]
        assert out.dtype == np.float32 and np.mean(out.argmax(1) == expected) >= agreement, path.name
    model = onnx.load(str(qdq))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    zero_points = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if "zero_point" in t.name]
    assert zero_points and not any(np.any(z) for z in zero_points)  # symmetric, as TensorRT requires
    f16_model = onnx.load(str(f16))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in f16_model.graph.initializer)
    assert f16_model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stay FP32
    with pytest.raises(ValueError, match="INT8 needs calibration images"):
        copy = onnx_path.with_name("copy.onnx")  # no Q/DQ model cached for it yet
        copy.write_bytes(onnx_path.read_bytes())
        qdq_int8_onnx(copy, spec, None, (64, 128))


@pytest.mark.skipif(HAVE_TRT, reason="checks the error where the tensorrt module is missing")
def test_tensorrt_kind_without_tensorrt_names_the_missing_module(tmp_path):
    with pytest.raises(RuntimeError, match=r"TensorRT Python package not importable.*TensorRT 10 or 11"):
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
