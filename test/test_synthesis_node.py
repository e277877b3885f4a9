"""synthesis_trainer_node across processes with real rclpy: a job to completion, stop + resume, kill -9 + restart,
frames from a topic (bad encodings counted, never fatal), invalid parameters, and the parameter file.

The node runs as its own process (``python -m flow_anomaly_ros.ros.synthesis_node``) at tiny sizes (64×128 frames, a
one-transform MAF, a few fine-tuning steps); this test process calls its services, publishes frames and listens to
``~/status`` and ``/diagnostics``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosutil import REPO, spin_until, start_python, stop_process

pytestmark = pytest.mark.ros

NODE = "synthesis_trainer_node"
TINY = {
    "num_frames": 4, "scene_height": 64, "scene_width": 128, "crop_height": 64, "crop_width": 128,
    "patches_per_frame": 16, "maf_transforms": 1, "maf_hidden": 16, "maf_steps": 6, "maf_batch_size": 32,
    "maf_checkpoint_every": 1, "num_negatives": 16, "synthetic_examples": 2, "finetune_steps": 2, "batch_size": 2,
    "finetune_checkpoint_every": 1, "threads": 1, "diagnostics_period_s": 0.5, "status_period_s": 0.5,
    "base_model": "scratch",
}  # fmt: skip


def _start_node(namespace: str, **params) -> object:
    args = ["-m", "flow_anomaly_ros.ros.synthesis_node", "--ros-args", "-r", f"__ns:=/{namespace}"]
    for name, value in {**TINY, **params}.items():
        text = "true" if value is True else "false" if value is False else str(value)
        args += ["-p", f"{name}:={text}"]
    return start_python(args)


class Probe:
    """Service clients, ~/status and /diagnostics of one node (in a namespace), from the test process."""

    def __init__(self, node, namespace: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from flow_anomaly_ros.msg import TrainingStatus
        from std_srvs.srv import Trigger

        from flow_anomaly_ros.ros.synthesis_node import _status_qos

        self.node = node
        self.prefix = f"/{namespace}/{NODE}"
        self.statuses: list = []
        self.diagnostics: list = []
        node.create_subscription(TrainingStatus, f"{self.prefix}/status", self.statuses.append, _status_qos())
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.clients = {n: node.create_client(Trigger, f"{self.prefix}/{n}") for n in ("start", "stop", "resume")}
        self.Trigger = Trigger
        self.S = TrainingStatus

    def _on_diag(self, msg) -> None:
        self.diagnostics.extend(s for s in msg.status if s.name == self.prefix)

    def call(self, service: str, timeout: float = 60.0):
        client = self.clients[service]
        assert spin_until(self.node, client.service_is_ready, timeout=timeout), f"{service} never became ready"
        future = client.call_async(self.Trigger.Request())
        assert spin_until(self.node, future.done, timeout=timeout), f"{service} did not answer"
        return future.result()

    def wait_status(self, predicate, timeout: float = 120.0, since: int = 0):
        ok = spin_until(self.node, lambda: any(predicate(s) for s in self.statuses[since:]), timeout=timeout)
        last = [(s.state, s.stage, s.step, s.message) for s in self.statuses[-3:]]
        assert ok, f"status never matched; last {last}; diagnostics {self.last_diag()}"
        return next(s for s in self.statuses[since:] if predicate(s))

    def wait_diag(self, predicate, timeout: float = 30.0):
        start = len(self.diagnostics)
        ok = spin_until(self.node, lambda: any(predicate(s) for s in self.diagnostics[start:]), timeout=timeout)
        assert ok, f"diagnostics never matched; last {self.last_diag()}"
        return next(s for s in self.diagnostics[start:] if predicate(s))

    def last_diag(self):
        return [(s.level, s.message) for s in self.diagnostics[-2:]]


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _level(status) -> int:
    from flow_anomaly_ros.ros.diagnostics import level_of

    return level_of(status)


def test_scenes_job_runs_to_completion_and_the_exported_model_loads(ros_node, tmp_path):
    from flow_anomaly_ros.runtime import load_backend
    from flow_anomaly_ros.synthesis.job import STAGES

    work = tmp_path / "job"
    proc = _start_node("syn_a", work_dir=str(work), source="scenes")
    try:
        probe = Probe(ros_node, "syn_a")
        idle = probe.wait_status(lambda s: s.state == probe.S.IDLE, timeout=60)
        assert idle.output_dir == str(work)
        reply = probe.call("stop")
        assert not reply.success and "no job is running" in reply.message
        reply = probe.call("start")
        assert reply.success, reply.message
        done = probe.wait_status(lambda s: s.state in (probe.S.DONE, probe.S.FAILED))
        assert done.state == probe.S.DONE, done.message
        assert done.output_dir == str(work / "finetune" / "model") and done.overall_progress == pytest.approx(1.0)
        stages = [s.stage for s in probe.statuses if s.state == probe.S.RUNNING and s.stage]
        assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == list(STAGES)
        diag = probe.wait_diag(lambda s: _values(s).get("state") == "DONE")
        assert _level(diag) == 0 and _values(diag)["stages_done"] == ",".join(STAGES)
        reply = probe.call("resume")
        assert not reply.success and "is complete" in reply.message
    finally:
        out = stop_process(proc)
    assert "Traceback" not in out, out
    backend = load_backend("onnxruntime", work / "finetune" / "model", device="cpu")
    logits = backend.infer(np.zeros((64, 128, 3), np.uint8))
    assert logits.shape == (1, 20, 64, 128)
    assert (work / "figures" / "figure9_maf_patches.png").is_file()


def test_stop_resume_then_kill_9_and_restart_resumes_from_the_checkpoint(ros_node, tmp_path):
    work = tmp_path / "job"
    params = {"work_dir": str(work), "source": "scenes", "finetune_steps": 8, "export_onnx": False}
    proc = _start_node("syn_b", **params)
    restarted = None
    try:
        probe = Probe(ros_node, "syn_b")
        assert probe.call("start").success
        probe.wait_status(lambda s: s.stage == "finetune" and s.step >= 2)
        reply = probe.call("stop")
        assert reply.success and "finetune" in reply.message, reply.message
        stopped = probe.wait_status(lambda s: s.state == probe.S.STOPPED)
        ckpt = json.loads((work / "finetune" / "checkpoint" / "manifest.json").read_text())
        assert 1 <= ckpt["step"] < 8
        assert probe.wait_diag(lambda s: "~/resume continues it" in s.message)
        mark = len(probe.statuses)
        reply = probe.call("resume")
        assert reply.success and "continuing after stages" in reply.message, reply.message
        first = probe.wait_status(lambda s: s.stage == "finetune" and s.step > 0, since=mark)
        assert first.step > ckpt["step"] >= 2, (first.step, ckpt, stopped.step)  # continued, did not start over
        probe.wait_status(lambda s: s.stage == "finetune" and s.step >= ckpt["step"] + 3, since=mark)
        os.killpg(proc.pid, signal.SIGKILL)  # no clean shutdown: the restarted node must pick up the pieces
        proc.wait(timeout=30)
        killed_at = json.loads((work / "finetune" / "checkpoint" / "manifest.json").read_text())["step"]
        assert killed_at < 8
        mark = len(probe.statuses)
        restarted = _start_node("syn_b", resume_on_start=True, **params)
        done = probe.wait_status(lambda s: s.state in (probe.S.DONE, probe.S.FAILED), since=mark)
        assert done.state == probe.S.DONE, done.message
        state = json.loads((work / "job_state.json").read_text())
        assert state["stages"]["finetune"]["resumed_from"] == killed_at and state["stages"]["finetune"]["steps"] == 8
        assert "skipped" in state["stages"]["export"]
    finally:
        stop_process(proc)
        out = stop_process(restarted) if restarted is not None else ""
    assert "Traceback" not in out, out


def _tiny_segmentation_model(path: Path) -> Path:
    import torch

    from flow_anomaly_ros.segmentation import SegmentationSpec, build_model, save_segmentation_model

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large").eval()
    save_segmentation_model(path, model, SegmentationSpec(backbone="mobilenet_v3_large"))
    return path


def test_topic_frames_are_gathered_and_bad_frames_are_counted_not_fatal(ros_node, tmp_path):
    from sensor_msgs.msg import Image

    from flow_anomaly_ros.ros.image_conversion import array_to_image
    from flow_anomaly_ros.ros.qos import qos_from_name

    base = _tiny_segmentation_model(tmp_path / "base")
    work = tmp_path / "job"
    proc = _start_node("syn_c", work_dir=str(work), source="topic", base_model=str(base), num_frames=3,
                       image_topic="/syn_c/camera", gather_timeout_s=120.0, maf_steps=5000)  # fmt: skip
    try:
        probe = Probe(ros_node, "syn_c")
        pub = ros_node.create_publisher(Image, "/syn_c/camera", qos_from_name("reliable", 10))
        assert probe.call("start").success
        assert spin_until(ros_node, lambda: pub.get_subscription_count() > 0, timeout=30), "node never subscribed"
        bad = Image(height=64, width=128, encoding="yuv422", step=256)
        bad.data = bytes(64 * 256)
        pub.publish(bad)
        short = array_to_image(np.zeros((64, 128, 3), np.uint8), "rgb8")
        short.data = short.data[:100]  # truncated payload
        pub.publish(short)
        small = array_to_image(np.zeros((32, 32, 3), np.uint8), "rgb8")  # smaller than the crop
        pub.publish(small)
        warn = probe.wait_diag(lambda s: int(_values(s).get("bad_frames", 0)) >= 3)
        assert _level(warn) == 1 and "unusable input frames" in warn.message
        rng = np.random.default_rng(0)
        frames = [array_to_image(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8), "rgb8") for _ in range(3)]
        for frame in frames:
            pub.publish(frame)
        probe.wait_status(lambda s: s.stage == "maf_train")
        assert probe.call("stop").success
        probe.wait_status(lambda s: s.state == probe.S.STOPPED)
        diag = probe.wait_diag(lambda s: _values(s).get("state") == "STOPPED")
        values = _values(diag)
        assert values["frames_kept"] == "3" and values["bad_frames"] == "3" and values["stages_done"] == "gather"
        assert len(list((work / "dataset" / "gtFine").rglob("*_labelTrainIds.png"))) == 3
        assert spin_until(ros_node, lambda: pub.get_subscription_count() == 0, timeout=10), "still subscribed"
    finally:
        out = stop_process(proc)
    assert "Traceback" not in out, out


def test_invalid_parameters_keep_the_node_up_and_say_why(ros_node, tmp_path):
    proc = _start_node("syn_d", work_dir=str(tmp_path / "job"), source="topic", low_quantile=0.5, high_quantile=0.2)
    try:
        probe = Probe(ros_node, "syn_d")
        diag = probe.wait_diag(lambda s: _level(s) == 2)
        assert "set base_model" in diag.message and "quantiles must satisfy" in diag.message
        reply = probe.call("start")
        assert not reply.success and "not active" in reply.message and "set base_model" in reply.message
        assert proc.poll() is None
    finally:
        out = stop_process(proc)
    assert "Traceback" not in out, out


def test_parameter_file_lists_every_node_parameter_with_its_type():
    from flow_anomaly_ros.ros.managed_node import COMMON_PARAMS
    from flow_anomaly_ros.ros.runner import node_parameters
    from flow_anomaly_ros.ros.synthesis_node import JOB_FIELDS, SynthesisTrainerNode
    from flow_anomaly_ros.synthesis.job import JobConfig

    path = REPO / "config" / "synthesis_trainer.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["/**/synthesis_trainer_node"]
    params = node_parameters(path, NODE)
    table = {p.name: p for p in (*COMMON_PARAMS, *SynthesisTrainerNode.PARAMS)}
    assert set(params) == set(table), f"missing: {set(table) - set(params)}; unknown: {set(params) - set(table)}"
    for name, value in params.items():
        assert type(value) is type(table[name].default), f"{name}: {value!r} vs default {table[name].default!r}"
        assert not table[name].problems(value), table[name].problems(value)
    JobConfig.from_dict({k: params[k] for k in JOB_FIELDS})  # the file's job is valid as it stands
