"""`flow-anomaly ts dataset|train|evaluate` run as a user runs them (own process), at a tiny size; clear user errors.

The tiny config keeps the real pipeline (KITTI + DBC CAN, every feature) and shrinks only the split, the fault list
and the training stride, so the three commands finish in well under a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flow_anomaly_ros.timeseries.signals import DEFAULT_CONFIG_PATH

FAULTS = ["bias_jump", "noise_burst", "nan", "dos_flood", "spoof_speed"]


def _command() -> list[str]:
    """The installed ``flow-anomaly`` entry point (what users run), else the same ``main`` through ``-c``."""
    script = Path(sys.executable).parent / "flow-anomaly"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from flow_anomaly_ros.cli import main; sys.exit(main())"]


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run(
        [*_command(), "ts", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts_cli")
    doc = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    doc["split"] = {"train": [0.0, 0.2], "calibrate": [0.2, 0.27], "test": [0.27, 0.37], "train_stride_s": 0.2}
    doc["dataset"].update(test_copies=1, faults=FAULTS)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    res = _run("dataset", "--config", str(cfg), "--out", str(root / "data"))
    assert res.returncode == 0, res.stderr[-3000:]
    return root, cfg, res


def test_dataset_writes_the_labelled_split(tiny):
    root, _, res = tiny
    data = root / "data"
    names = sorted(p.name for p in data.iterdir())
    assert names == ["calibrate.npz", "labels.json", "test_clear_0.npz", "test_subtle_0.npz", "train.npz"]
    labels = json.loads((data / "labels.json").read_text())
    for sev in ("clear", "subtle"):
        faults = labels["tests"][f"test_{sev}_0"]
        assert sorted(f["fault"] for f in faults) == sorted(FAULTS)
        assert all(f["severity"] == sev and f["end_s"] > f["start_s"] for f in faults)
    assert "KITTI" in labels["meta"]["source"] and "wrote" in res.stdout


def test_train_writes_a_model_directory_that_loads_and_scores(tiny):
    from flow_anomaly_ros.data.timeseries_dataset import load_dataset
    from flow_anomaly_ros.timeseries.pipeline import featurize_recording, load_timeseries_model, stack_features

    root, cfg, _ = tiny
    out = root / "model"
    res = _run("train", "--config", str(cfg), "--data", str(root / "data"), "--detector", "realnvp", "--quick",
               "--epochs", "2", "--threads", "1", "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "realnvp" in res.stderr and "epoch" in res.stderr  # tqdm progress bar
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "realnvp.onnx",
        "realnvp_single.onnx",
        "toyota_prius_2010_pt.dbc",  # the DBC travels with the model
        "weights.safetensors",
    ]
    model = load_timeseries_model(out, expected_detector="realnvp")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["detector"]["params"]["epochs"] == 2 and manifest["training"]["n_train"] > 100
    assert model.detector.calibration_["method"] == "quantile" and np.isfinite(model.detector.threshold_)
    ds = load_dataset(root / "data")
    x, _ = stack_features(featurize_recording(model.config, ds.calibrate))
    scores = model.score_windows(x[:50])
    assert scores.shape == (50,) and np.all(np.isfinite(scores))


def test_evaluate_writes_report_results_and_figures(tiny):
    root, cfg, _ = tiny
    out = root / "report"
    res = _run("evaluate", "--config", str(cfg), "--data", str(root / "data"), "--quick",
               "--detectors", "realnvp,iforest,elliptic", "--threads", "1", "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    expected_png = [f"{k}_{s}.png" for k in ("scores", "signals") for s in ("clear", "subtle")] + ["comparison.png"]
    assert files == sorted(["report.md", "results.json", *expected_png])
    for png in expected_png:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 5000
    report = (out / "report.md").read_text()
    for text in ("## Clear faults", "## Subtle faults", "RealNVP (flow)", "Isolation Forest", "ROC-AUC", "VUS-PR",
                 "per fault type and target"):  # fmt: skip
        assert text in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"realnvp", "iforest", "elliptic"}
    for per_sev in results["metrics"].values():
        assert set(per_sev) == {"clear", "subtle"}
        m = per_sev["clear"]
        assert 0.0 <= m["roc_auc"] <= 1.0 and 0.0 <= m["ap"] <= 1.0 and m["events"] == len(FAULTS)
        assert set(m["per_fault_recall"]) == set(FAULTS)


def test_user_errors_are_clear_and_exit_2(tiny, tmp_path, capsys):
    """Same ``main`` as the entry point, in this process (the messages, not the start-up, are under test)."""
    from flow_anomaly_ros.cli import main

    root, cfg, _ = tiny

    def run(*args: str) -> tuple[int, str]:
        try:
            rc = main(["ts", *args])
        except SystemExit as exc:  # argparse errors
            rc = exc.code
        return rc, capsys.readouterr().err

    rc, err = run("evaluate", "--config", str(cfg), "--data", str(root / "data"), "--detectors", "realnvp,lof",
                  "--out", str(tmp_path / "r"))  # fmt: skip
    assert rc == 2 and "unknown detector(s) ['lof']" in err and not (tmp_path / "r").exists()
    rc, err = run("train", "--detector", "lof", "--out", str(tmp_path / "m"))
    assert rc == 2 and "invalid choice: 'lof'" in err
    rc, err = run("train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "m"))
    assert rc == 2 and "no valid data set" in err
    rc, err = run("train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "m"))
    assert rc == 2 and "cannot read config" in err
    bad = yaml.safe_load(cfg.read_text())
    bad["dataset"]["faults"] = ["bias_jump", "teleport"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    rc, err = run("dataset", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "d"))
    assert rc == 2 and "unknown fault type(s) ['teleport']" in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()
