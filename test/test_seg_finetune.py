"""Fine-tuning: learns the pasted anomalies, checkpoints atomically, resumes exactly, and runs under DDP (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flow_anomaly_ros.model_store import read_manifest
from flow_anomaly_ros.runtime import load_backend
from flow_anomaly_ros.segmentation.config import FinetuneConfig
from flow_anomaly_ros.segmentation.finetune import finetune, parameter_checksum
from flow_anomaly_ros.segmentation.patch_sources import random_texture_source

REPO = Path(__file__).resolve().parents[1]


def tiny_config(out: Path, steps: int = 3, **overrides) -> dict:
    cfg = {
        "model": {"backbone": "mobilenet_v3_large"},
        "data": {"crop": [48, 96], "num_scenes": 8},
        "patches": {"min_size": 8},
        "train": {"steps": steps, "batch_size": 1, "lr": 0.01, "threads": 1},
        "validation": {"every": 2, "num_images": 2, "size": [48, 96]},
        "output": {"dir": str(out), "checkpoint_every": 1},
    }
    for section, values in overrides.items():
        cfg[section].update(values)
    return cfg


class Crash(RuntimeError):
    pass


def crashing_source(after_calls: int):
    """The real default patch source, raising after a number of calls: a job killed mid-run."""
    inner, calls = random_texture_source(8), [0]

    def source(n, rng):
        calls[0] += 1
        if calls[0] > after_calls:
            raise Crash("simulated kill")
        return inner(n, rng)

    return source


def test_finetune_writes_a_deployable_model_and_history(tmp_path):
    result = finetune(FinetuneConfig.from_dict(tiny_config(tmp_path / "run", steps=2)), progress=False)
    assert result.steps == 2 and result.resumed_from == 0
    record = result.history[-1]
    assert record["step"] == 2 and {"miou", "anomaly_ap", "anomaly_fpr95", "anomaly_auroc"} <= set(record)
    assert record["train_anomaly_pixels"] > 0  # patches really were pasted
    manifest = read_manifest(result.model_dir)
    assert manifest["training"]["steps"] == 2 and manifest["backbone"] == "mobilenet_v3_large"
    backend = load_backend("torch", result.model_dir)
    assert backend.infer(np.zeros((40, 60, 3), np.uint8)).shape == (1, 20, 40, 60)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and len(metrics["parameter_checksums"]) == 1


def test_a_killed_job_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    straight = finetune(FinetuneConfig.from_dict(tiny_config(tmp_path / "a", steps=3)), progress=False)
    cfg_b = FinetuneConfig.from_dict(tiny_config(tmp_path / "b", steps=3))
    with pytest.raises(Crash):
        finetune(cfg_b, progress=False, patch_source=crashing_source(after_calls=2))
    assert read_manifest(tmp_path / "b" / "checkpoint")["step"] == 2
    resumed = finetune(cfg_b, progress=False)
    assert resumed.resumed_from == 2
    assert resumed.parameter_checksums == straight.parameter_checksums
    assert [h["step"] for h in resumed.history] == [2, 3]


def test_fine_tuning_raises_the_anomaly_probability_on_pasted_patches(tmp_path):
    """A few steps must move the anomaly class up on pasted pixels (same initial weights before and after).

    Six CPU steps from random weights only shift the anomaly logit up; learning *where* anomalies are takes real
    training (longer runs: the demo's fine-tune and ``flow-anomaly maf effect``)."""
    from flow_anomaly_ros.data.street_scenes import generate_scene
    from flow_anomaly_ros.segmentation.model import build_model, save_segmentation_model
    from flow_anomaly_ros.segmentation.scores import score_map
    from flow_anomaly_ros.synthesis.paste import paste_patches

    train = {"optimizer": "adamw", "lr": 5e-3, "batch_size": 2, "freeze_bn": False}
    cfg = tiny_config(tmp_path / "learn", steps=6, train=train, validation={"every": 100})
    result = finetune(FinetuneConfig.from_dict(cfg), progress=False)
    import torch

    torch.manual_seed(0)  # finetune builds its initial model right after seeding with train.seed = 0
    save_segmentation_model(tmp_path / "initial", build_model("mobilenet_v3_large"))
    rng = np.random.default_rng(123)
    scene = generate_scene(48, 96, seed=999)
    img, _, mask = paste_patches(scene.image, scene.label, random_texture_source(8)(1, rng), rng, min_size=16)
    before = score_map(load_backend("torch", tmp_path / "initial").infer(img), "anomaly_prob")[0]
    after = score_map(load_backend("torch", result.model_dir).infer(img), "anomaly_prob")[0]
    assert after[mask].mean() > 1.3 * before[mask].mean()  # measured: 0.047 -> 0.078 (a global shift, 6 steps)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        FinetuneConfig.from_dict({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="unknown config section"):
        FinetuneConfig.from_dict({"trainer": {}})
    with pytest.raises(ValueError, match=r"data\.root is required"):
        FinetuneConfig.from_dict({"data": {"source": "cityscapes"}})
    with pytest.raises(ValueError, match=r"patches\.source"):
        FinetuneConfig.from_dict({"patches": {"source": "gan"}})


def test_shipped_example_config_is_valid():
    cfg = FinetuneConfig.from_yaml(REPO / "config" / "segmentation_finetune.yaml")
    assert cfg.model.backbone in ("resnet101", "mobilenet_v3_large")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_on_gloo_keeps_ranks_identical(tmp_path):
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "ddp", steps=2)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "flow_anomaly_ros.cli", "seg", "finetune", str(cfg_path),
           "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(metrics["parameter_checksums"]) == 2 and len(set(metrics["parameter_checksums"])) == 1
    backend = load_backend("torch", tmp_path / "ddp" / "model")
    assert parameter_checksum(backend.model) == metrics["parameter_checksums"][0]


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_state_survives_the_safetensors_json_round_trip(kind):
    import torch

    from flow_anomaly_ros.segmentation.finetune import _optimizer_tensors, _restore_optimizer

    def make():
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)
        opt = (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9) if kind == "sgd"
               else torch.optim.AdamW(net.parameters(), lr=0.1))  # fmt: skip
        return net, opt

    def step(net, opt, seed):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()

    a, opt_a = make()
    for s in range(3):
        step(a, opt_a, s)
    tensors, meta = _optimizer_tensors(opt_a)
    meta = json.loads(json.dumps(meta))  # as stored in the manifest
    b, opt_b = make()
    b.load_state_dict(a.state_dict())
    _restore_optimizer(opt_b, {k: v.numpy() for k, v in tensors.items()}, meta)
    step(a, opt_a, 9)
    step(b, opt_b, 9)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
