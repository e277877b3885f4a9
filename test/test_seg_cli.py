"""``flow-anomaly seg``: init → export --verify → scenes (benchmark layout) → evaluate --calibrate → info; errors."""

from __future__ import annotations

import json

import pytest

from flow_anomaly_ros.cli import main
from flow_anomaly_ros.model_store import read_manifest


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tmp_path_factory.mktemp("cli") / "model"
    assert main(["seg", "init", "--backbone", "mobilenet_v3_large", "--out", str(model)]) == 0
    assert main(["seg", "export", str(model), "--verify", "--verify-size", "64x128"]) == 0
    return model


def test_init_and_export_write_a_model_directory_with_onnx(exported, capsys):
    assert (exported / "model.onnx").is_file()
    assert read_manifest(exported)["initialised_from"].startswith("random")
    assert main(["seg", "info", str(exported)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"] == "mobilenet_v3_large" and info["onnx"].endswith("model.onnx")


def test_evaluate_on_a_benchmark_layout_writes_table_overlays_and_thresholds(exported, tmp_path, capsys):
    bench = tmp_path / "smiyc"
    assert main(["seg", "scenes", "--out", str(bench), "--num", "3", "--size", "64x128", "--anomalies", "2",
                 "--layout", "smiyc"]) == 0  # fmt: skip
    out = tmp_path / "eval"
    rc = main(["seg", "evaluate", str(exported), "--data", f"benchmark:{bench}", "--num", "3", "--out", str(out),
               "--overlays", "2", "--calibrate"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["anomaly"]) == {"anomaly_prob", "max_softmax", "max_logit", "energy", "densehybrid"}
    assert results["images"] == 3 and results["backend"].startswith("onnxruntime")
    assert len(list(out.glob("overlay_*.png"))) == 2
    assert "| anomaly_prob |" in (out / "results.md").read_text()
    manifest = read_manifest(exported)
    assert set(manifest["thresholds"]) == set(results["anomaly"])
    assert manifest["threshold_calibration"]["target_tpr"] == 0.95
    # the calibrated thresholds reach the runtime through the manifest next to model.onnx
    from flow_anomaly_ros.runtime import load_backend

    assert load_backend("onnxruntime", exported).spec.threshold_for("energy") == manifest["thresholds"]["energy"]


def test_evaluate_street_scenes_reports_miou(exported, tmp_path):
    out = tmp_path / "eval"
    assert main(["seg", "evaluate", str(exported), "--num", "2", "--size", "64x128", "--backend", "torch",
                 "--methods", "anomaly_prob", "energy", "--out", str(out)]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["miou"] is not None and set(results["anomaly"]) == {"anomaly_prob", "energy"}


def test_user_errors_exit_2_with_a_message(exported, tmp_path, capsys):
    assert main(["seg", "build-engine", str(exported), "--device", "cuda"]) == 2
    assert "cannot build the TensorRT engine" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 1}\n")
    assert main(["seg", "finetune", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["seg", "init", "--backbone", "resnet50", "--weights", str(tmp_path / "missing.pth"),
                 "--out", str(tmp_path / "m")]) == 2  # fmt: skip
    assert "never downloaded" in capsys.readouterr().err
    assert main(["seg", "evaluate", str(exported), "--data", "kitti"]) == 2


def test_scenes_cityscapes_layout_is_readable_by_the_loader(tmp_path):
    from flow_anomaly_ros.data.cityscapes import CityscapesDataset

    assert main(["seg", "scenes", "--out", str(tmp_path), "--num", "2", "--size", "48x96",
                 "--layout", "cityscapes"]) == 0  # fmt: skip
    assert len(CityscapesDataset(tmp_path, "val")) == 2
