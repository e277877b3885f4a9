"""The ROS-free synthesis job (gather → MAF → negatives → fine-tuning → ONNX): outputs, stop, kill -9 + resume, errors.

Everything runs for real at tiny sizes (64×128 scenes, a one-transform MAF, 2–3 fine-tuning steps of mobilenet
DeepLabV3 on 2 CPU cores); the job killed with SIGKILL runs in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest

from flow_anomaly_ros.synthesis.job import STAGES, JobConfig, JobStopped, SynthesisJob

REPO = Path(__file__).resolve().parents[1]


def tiny(work: Path, **overrides) -> JobConfig:
    """A job that runs end to end in ~15 s on the shared 2 cores."""
    values = dict(
        work_dir=str(work), num_frames=4, scene_height=64, scene_width=128, crop_height=64, crop_width=128,
        patches_per_frame=16, maf_transforms=1, maf_hidden=16, maf_steps=6, maf_batch_size=32,
        maf_checkpoint_every=1, num_negatives=16, synthetic_examples=2, finetune_steps=2, batch_size=2,
        finetune_checkpoint_every=1, threads=1, base_model="scratch",
    )  # fmt: skip
    values.update(overrides)
    return JobConfig.from_dict(values)


def _state(work: Path) -> dict:
    return json.loads((work / "job_state.json").read_text())


def test_full_run_writes_every_output_and_the_onnx_model_loads(tmp_path):
    from flow_anomaly_ros.runtime import load_backend
    from flow_anomaly_ros.synthesis.sources import frames_from_scenes

    work = tmp_path / "job"
    reports = []
    job = SynthesisJob(tiny(work), on_progress=reports.append)
    state = job.run()
    assert job.complete and list(state["stages"]) == list(STAGES)
    assert state["stages"]["gather"]["frames"] == 4 and state["stages"]["gather"]["pseudo_labelled"] == 0
    assert state["stages"]["maf_train"]["trained_steps"] == 6
    sampling = state["stages"]["synthesis"]["sampling"]
    assert 0 < sampling["acceptance_rate"] <= 1 and sampling["samples_per_s"] > 0
    assert "skipped" in state["stages"]["engine"]  # no TensorRT on this machine
    # every stage reported, in order, and overall progress never went backwards
    stages = [r.stage for r in reports]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == list(STAGES)
    overall = [r.overall for r in reports]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)
    with np.load(work / "negatives.npz") as data:
        assert data["patches"].shape == (16, 8, 8, 3) and data["patches"].dtype == np.uint8
    assert len(list((work / "dataset" / "leftImg8bit" / "train").rglob("*.png"))) == 4
    assert len(list((work / "synthetic" / "gtFine" / "train").rglob("*_labelTrainIds.png"))) == 2
    for fig in ("figure9_maf_patches.png", "figure10_pasting.png"):
        assert (work / "figures" / fig).stat().st_size > 1000
    backend = load_backend("onnxruntime", work / "finetune" / "model", device="cpu")
    _, image, _ = next(frames_from_scenes(1, 64, 128, seed=99))
    logits = backend.infer(image)
    assert logits.shape == (1, 20, 64, 128) and np.isfinite(logits).all()
    # a finished job does nothing when run again
    before = _state(work)
    again = SynthesisJob(tiny(work), on_progress=reports.append)
    n = len(reports)
    assert again.complete and again.run() == before and len(reports) == n


def test_stop_during_maf_training_then_resume_continues_from_the_checkpoint(tmp_path):
    work = tmp_path / "job"
    cfg = tiny(work, maf_steps=40, export_onnx=False)
    job = SynthesisJob(cfg)

    def stop_at_step_3(p):
        if p.stage == "maf_train" and p.step >= 3:
            job.stop()

    job.on_progress = stop_at_step_3
    with pytest.raises(JobStopped):
        job.run()
    assert job.done("gather") and not job.done("maf_train")
    ckpt = json.loads((work / "maf_checkpoint" / "manifest.json").read_text())
    assert 3 <= ckpt["step"] < 40
    gathered_at = _state(work)["stages"]["gather"]["finished_unix"]
    steps = []
    resumed = SynthesisJob(cfg, on_progress=lambda p: steps.append((p.stage, p.step)))
    resumed.run()
    assert resumed.complete
    maf_steps = [s for stage, s in steps if stage == "maf_train" and s]
    assert maf_steps[0] == ckpt["step"] + 1 and maf_steps[-1] == 40  # continued, did not start over
    state = _state(work)
    assert state["stages"]["gather"]["finished_unix"] == gathered_at  # not gathered again
    assert state["stages"]["maf_train"]["trained_steps"] == 40
    assert "skipped" in state["stages"]["export"]


def test_reset_forgets_previous_outputs(tmp_path):
    work = tmp_path / "job"
    cfg = tiny(work)
    job = SynthesisJob(cfg)
    job.on_progress = lambda p: job.stop() if p.stage == "maf_train" and p.step >= 1 else None
    with pytest.raises(JobStopped):
        job.run()
    assert job.has_progress
    job.reset()
    assert not job.has_progress and not (work / "dataset").exists() and not job.done("gather")


KILL_SCRIPT = """
import json, sys
from flow_anomaly_ros.synthesis.job import JobConfig, SynthesisJob
cfg = JobConfig.from_dict(json.loads(sys.argv[1]))
job = SynthesisJob(cfg, on_progress=lambda p: print("PROGRESS", p.stage, p.step, flush=True))
job.run()
print("FINISHED", flush=True)
"""


def test_job_killed_with_sigkill_during_finetuning_resumes_from_its_checkpoint(tmp_path):
    work = tmp_path / "job"
    cfg = tiny(work, finetune_steps=3)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(asdict(cfg))],
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    seen = []
    try:
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            seen.append(line)
            # step 2 is being prepared: step 1 is done and checkpointed (checkpoint_every=1)
            if line.startswith("PROGRESS finetune 2") or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert any(s.startswith("PROGRESS finetune 2") for s in seen), "".join(seen[-20:])
    before = _state(work)
    assert {"gather", "maf_train", "synthesis"} <= set(before["stages"]) and "finetune" not in before["stages"]
    resumed = SynthesisJob(cfg)
    state = resumed.run()
    assert resumed.complete
    assert state["stages"]["finetune"]["resumed_from"] >= 1
    for stage in ("gather", "maf_train", "synthesis"):
        assert state["stages"][stage]["finished_unix"] == before["stages"][stage]["finished_unix"]
    assert (work / "finetune" / "model" / "model.onnx").is_file()


def _tiny_segmentation_model(path: Path) -> Path:
    import torch

    from flow_anomaly_ros.segmentation import SegmentationSpec, build_model, save_segmentation_model

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large").eval()
    save_segmentation_model(path, model, SegmentationSpec(backbone="mobilenet_v3_large"))
    return path


def test_topic_frames_are_pseudo_labelled_and_a_restart_waits_only_for_the_missing_ones(tmp_path):
    base = _tiny_segmentation_model(tmp_path / "base")
    work = tmp_path / "job"
    cfg = tiny(work, source="topic", base_model=str(base), num_frames=3, gather_every_n=2, gather_timeout_s=1.0)
    frame = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    job = SynthesisJob(cfg)
    assert job.wants_frames
    kept = [job.offer_frame(frame) for _ in range(4)]
    assert kept == [True, False, True, False]  # every 2nd frame
    with pytest.raises(TimeoutError, match="only 2 of 3 frames arrived within gather_timeout_s"):
        job._stage_gather()
    images = sorted((work / "dataset" / "leftImg8bit" / "train" / "gathered").glob("*.png"))
    assert len(images) == 2
    restarted = SynthesisJob(cfg)
    restarted.offer_frame(frame)
    info = restarted._stage_gather()
    assert info == {"frames": 3, "pseudo_labelled": 1}
    labels = sorted((work / "dataset" / "gtFine" / "train" / "gathered").glob("*_labelTrainIds.png"))
    assert len(labels) == 3
    from PIL import Image

    label = np.asarray(Image.open(labels[-1]))
    assert label.shape == (64, 128) and label.max() < 19  # arg-max over the inlier classes only
    restarted._mark_done("gather", info)
    assert not restarted.wants_frames and not restarted.offer_frame(frame)


def test_stop_while_waiting_for_topic_frames(tmp_path):
    cfg = tiny(tmp_path / "job", source="topic", base_model=str(tmp_path / "unused"), gather_timeout_s=60.0)
    job = SynthesisJob(cfg)
    threading.Timer(0.5, job.stop).start()
    t0 = time.monotonic()
    with pytest.raises(JobStopped):
        job.run()
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bogus": 1}, "unknown job setting"),
        ({"source": "camera"}, "source='camera' is not one of"),
        ({"source": "directory"}, "source=directory needs image_dir"),
        ({"source": "bag", "bag_path": "x.mcap"}, "set base_model"),
        ({"source": "topic"}, "set base_model"),
        ({"maf_steps": 0}, "maf_steps must be >= 1"),
        ({"crop_height": 16}, "crop and scene sizes must be >= 32"),
        ({"sampling_mode": "inside"}, "sampling_mode='inside'"),
        ({"low_quantile": 0.5, "high_quantile": 0.1}, "quantiles must satisfy"),
        ({"temperature": 0.0}, "must be > 0"),
        ({"batch_size": 1}, "batch_size must be >= 2 when training from scratch"),
        ({"engine_precision": "int4"}, "engine_precision"),
        ({"work_dir": ""}, "work_dir must not be empty"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **overrides)


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ValueError) as info:
        tiny(tmp_path, maf_steps=0, num_negatives=0, temperature=-1.0)
    text = str(info.value)
    assert "maf_steps" in text and "num_negatives" in text and "temperature" in text


def test_the_job_fine_tunes_the_shipped_base_by_default(tmp_path):
    from safetensors.numpy import load_file

    from flow_anomaly_ros.segmentation.base_model import default_base_model

    assert JobConfig.from_dict({"work_dir": str(tmp_path / "x")}).base_model == "shipped"
    work = tmp_path / "job"
    values = {f.name: getattr(tiny(work), f.name) for f in fields(JobConfig)}
    values.pop("base_model")  # the default
    job = SynthesisJob(JobConfig.from_dict(values))
    ft = job._finetune_config()
    assert ft.model.weights == str(default_base_model()) and ft.train.freeze_bn
    job.run()
    base = load_file(str(default_base_model() / "weights.safetensors"))
    tuned = load_file(str(work / "finetune" / "model" / "weights.safetensors"))
    shared = [k for k in base if k in tuned and k.startswith("backbone") and base[k].ndim == 4]
    assert shared
    # two SGD steps from the base: the backbone's convolutions stay next to it (mean change a few % of their mean
    # magnitude); a network from random weights differs from the base by about 100 %
    rel = [
        float(np.mean(np.abs(tuned[k].astype(np.float32) - base[k].astype(np.float32))) / np.mean(np.abs(base[k])))
        for k in shared
    ]
    assert float(np.median(rel)) < 0.1, float(np.median(rel))


def test_unlabelled_directory_without_base_model_fails_with_the_remedy(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(images / "a.png")
    job = SynthesisJob(tiny(tmp_path / "job", source="directory", image_dir=str(images)))
    with pytest.raises(ValueError, match="need base_model"):
        job.run()
    assert not job.done("gather")


def test_empty_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    job = SynthesisJob(tiny(tmp_path / "job", source="directory", image_dir=str(tmp_path / "empty")))
    with pytest.raises((ValueError, FileNotFoundError)):
        job.run()
