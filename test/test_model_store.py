"""Model directories are written atomically and refuse corrupt, truncated or mismatched content."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flow_anomaly_ros.model_store import (
    ModelFileError,
    atomic_write_json,
    load_model_dir,
    model_id,
    read_manifest,
    save_model_dir,
)


def _save(path):
    return save_model_dir(path, "timeseries/test", {"w": np.arange(6, dtype=np.float32)}, {"threshold": 1.5})


def test_round_trip_keeps_tensors_and_manifest(tmp_path):
    _save(tmp_path / "m")
    manifest, tensors = load_model_dir(tmp_path / "m", expected_kind="timeseries")
    assert manifest["threshold"] == 1.5 and manifest["kind"] == "timeseries/test"
    np.testing.assert_array_equal(tensors["w"], np.arange(6, dtype=np.float32))
    assert model_id(manifest).startswith("timeseries/test@")


def test_overwrite_replaces_whole_directory_and_leaves_no_temp_files(tmp_path):
    _save(tmp_path / "m")
    (tmp_path / "m" / "stale.txt").write_text("old")
    _save(tmp_path / "m")
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_truncated_weights_are_rejected_with_the_file_named(tmp_path):
    _save(tmp_path / "m")
    w = tmp_path / "m" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:20])
    with pytest.raises(ModelFileError, match=r"weights\.safetensors.*checksum"):
        load_model_dir(tmp_path / "m")


def test_corrupt_manifest_is_rejected(tmp_path):
    _save(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_manifest(tmp_path / "m")


def test_wrong_kind_and_missing_dir_are_rejected(tmp_path):
    _save(tmp_path / "m")
    with pytest.raises(ModelFileError, match="expected 'segmentation'"):
        read_manifest(tmp_path / "m", expected_kind="segmentation")
    with pytest.raises(ModelFileError, match="not found"):
        read_manifest(tmp_path / "nope")


def test_future_format_version_is_rejected(tmp_path):
    _save(tmp_path / "m")
    mpath = tmp_path / "m" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["format_version"] = 99
    atomic_write_json(mpath, manifest)
    with pytest.raises(ModelFileError, match="format_version 99"):
        read_manifest(tmp_path / "m")
