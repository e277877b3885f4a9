"""``synthesis_trainer_node``: the offline MAF-negatives training job as a ROS 2 node (thin shell around the core).

The job itself (gather → MAF → synthetic negatives → DeepLabV3 fine-tuning → ONNX → TensorRT engine, every output
written atomically, resumable per stage and per checkpoint) is :class:`flow_anomaly_ros.synthesis.job.SynthesisJob`;
this node only

- maps its parameters one to one onto :class:`~flow_anomaly_ros.synthesis.job.JobConfig` (same names; validated
  together, every problem in one error), plus a few node-only ones (input topic, QoS, status rate);
- gathers inlier frames from ``image`` (``sensor_msgs/Image``, or ``CompressedImage`` on ``image/compressed`` with
  ``transport:=compressed``) when ``source:=topic``; other sources (``bag``, ``directory``, ``scenes``) are read by the
  job. Frames that cannot be used (unknown encoding, corrupt data, too large, smaller than the crop) are counted and
  named on ``/diagnostics``; they never stop the node;
- runs the job in a background thread, started by services (``std_srvs/Trigger``):

  - ``~/start``: a NEW job with the current parameter values (outputs of a previous job in ``work_dir`` are removed);
  - ``~/stop``: ends the running job at its next training step (the MAF writes a checkpoint; the fine-tuning keeps
    its last periodic checkpoint);
  - ``~/resume``: continues the job in ``work_dir`` from its last completed stage and checkpoint (a new job if
    there is nothing to continue) — also after the node was killed;

- publishes ``~/status`` (``flow_anomaly_ros/msg/TrainingStatus``, reliable + transient local, every
  ``status_period_s`` and on every state change) and ``/diagnostics`` (every ``diagnostics_period_s``).

With ``resume_on_start:=true`` the job resumes (or begins) as soon as the node is active, so a node restarted by a
supervisor after a crash continues by itself.

Example::

    python -m flow_anomaly_ros.ros.synthesis_node --ros-args -p source:=scenes -p work_dir:=/tmp/job
    ros2 service call /synthesis_trainer_node/start std_srvs/srv/Trigger
    ros2 topic echo /synthesis_trainer_node/status
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from flow_anomaly_ros.msg import TrainingStatus
from flow_anomaly_ros.ros.diagnostics import ERROR, OK, STEADY_CLOCK, WARN, Health
from flow_anomaly_ros.ros.image_conversion import ImageConversionError, compressed_to_rgb, image_to_rgb
from flow_anomaly_ros.ros.managed_node import ManagedAnomalyNode, Param, run_node
from flow_anomaly_ros.ros.qos import QOS_NAMES, qos_from_name
from flow_anomaly_ros.segmentation.spec import BACKBONES
from flow_anomaly_ros.synthesis.job import SOURCES, STAGES, JobConfig, JobStopped, Progress, SynthesisJob

NODE_NAME = "synthesis_trainer_node"
STATE_NAMES = {
    TrainingStatus.IDLE: "IDLE",
    TrainingStatus.RUNNING: "RUNNING",
    TrainingStatus.STOPPING: "STOPPING",
    TrainingStatus.STOPPED: "STOPPED",
    TrainingStatus.DONE: "DONE",
    TrainingStatus.FAILED: "FAILED",
}
BAD_FRAME_NOTICE_S = 10.0  # diagnostics WARN this long after an unusable frame
JOIN_TIMEOUT_S = 60.0  # how long shutdown waits for the job thread to reach its next step

# JobConfig field -> (description, extra Param keyword arguments). Every field must be here (checked at import).
_JOB_DOCS: dict[str, tuple[str, dict[str, Any]]] = {
    "work_dir": ("job directory: dataset, MAF, negatives, figures, fine-tuned model, job_state.json", {}),
    "source": (
        "where inlier frames come from: topic (the image input), bag, directory or procedural scenes",
        {"choices": SOURCES},
    ),
    "image_dir": ("source=directory: images (recursively); Cityscapes trainId labels are used where present", {}),
    "bag_path": ("source=bag: rosbag2 directory or file (MCAP or SQLite3)", {}),
    "bag_topic": ("source=bag: image topic in the bag (empty = its only image topic)", {}),
    "num_frames": ("frames to gather (topic: wait for this many; other sources: at most this many)", {"min": 1}),
    "gather_every_n": ("keep every n-th frame of the topic or bag", {"min": 1}),
    "gather_timeout_s": (
        "source=topic: fail when the frames have not arrived within this many seconds",
        {"min": 0.001},
    ),
    "scene_height": ("source=scenes: height of the procedural street scenes", {"min": 32}),
    "scene_width": ("source=scenes: width of the procedural street scenes", {"min": 32}),
    "base_model": (
        "segmentation model to fine-tune and to pseudo-label unlabelled frames with: shipped "
        "(models/seg_base_mobilenet), scratch (random weights, backbone) or a model directory",
        {},
    ),
    "backbone": ("DeepLabV3 backbone when base_model is scratch", {"choices": BACKBONES}),
    "patch_size": ("side of the square inlier patches the MAF models (8 keeps sampling cheap)", {"min": 2}),
    "patches_per_frame": ("random patches taken from each gathered frame", {"min": 1}),
    "patch_scale": ("patches are cut at patch_size*patch_scale pixels and resized to patch_size", {"min": 0.01}),
    "maf_transforms": ("masked affine autoregressive transforms (each after a permutation)", {"min": 1}),
    "maf_hidden": ("hidden units of each MADE conditioner", {"min": 1}),
    "maf_blocks": ("hidden blocks of each MADE conditioner", {"min": 1}),
    "maf_steps": ("MAF negative log-likelihood training steps", {"min": 1}),
    "maf_lr": ("MAF Adam learning rate", {"min": 1e-9}),
    "maf_batch_size": ("patches per MAF training step", {"min": 1}),
    "maf_checkpoint_every": ("MAF checkpoint period in steps (resume point)", {"min": 1}),
    "sampling_mode": (
        "which MAF samples are negatives: outside (below low_quantile of inlier log-likelihood), "
        "boundary (between the quantiles) or any",
        {"choices": ("outside", "boundary", "any")},
    ),
    "temperature": (
        "std of the MAF base distribution when sampling (>1 reaches low-likelihood regions)",
        {"min": 1e-6},
    ),
    "low_quantile": ("inlier log-likelihood quantile below which samples are 'outside'", {"min": 0.0, "max": 1.0}),
    "high_quantile": ("upper quantile of the 'boundary' band", {"min": 0.0, "max": 1.0}),
    "num_negatives": ("synthetic negative patches to sample (pasted at random during fine-tuning)", {"min": 1}),
    "synthetic_examples": (
        "example images with pasted negatives written to synthetic/ (Cityscapes layout)",
        {"min": 0},
    ),
    "finetune_steps": ("segmentation fine-tuning steps", {"min": 1}),
    "batch_size": ("fine-tuning batch size", {"min": 1}),
    "lr": ("fine-tuning learning rate (poly schedule)", {"min": 1e-9}),
    "crop_height": ("fine-tuning crop height (and ONNX export height)", {"min": 32}),
    "crop_width": ("fine-tuning crop width (and ONNX export width)", {"min": 32}),
    "patches_per_image": ("negatives pasted into each training image", {"min": 0}),
    "finetune_checkpoint_every": ("fine-tuning checkpoint period in steps (resume point)", {"min": 1}),
    "export_onnx": ("export the fine-tuned model to ONNX (finetune/model/model.onnx)", {}),
    "build_engine": ("build a TensorRT engine from the ONNX model where TensorRT imports (skipped otherwise)", {}),
    "engine_precision": ("TensorRT engine precision", {"choices": ("fp32", "fp16", "int8")}),
    "seed": ("seed of every random choice (frames, patches, MAF, pasting, batches)", {"min": 0}),
    "threads": ("torch CPU threads of the job", {"min": 1}),
}
_missing = {f.name for f in fields(JobConfig)} ^ set(_JOB_DOCS)
assert not _missing, f"synthesis node parameters out of sync with JobConfig: {_missing}"
JOB_PARAMS: tuple[Param, ...] = tuple(
    Param(f.name, f.default, _JOB_DOCS[f.name][0], **_JOB_DOCS[f.name][1]) for f in fields(JobConfig)
)
JOB_FIELDS = tuple(f.name for f in fields(JobConfig))


def _status_qos() -> QoSProfile:
    """Reliable + transient local: a late subscriber (``ros2 topic echo``) gets the latest status at once."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


class SynthesisTrainerNode(ManagedAnomalyNode):
    """Lifecycle node: configure validates the parameters, activate enables the services' jobs and frame input."""

    PARAMS = (
        *JOB_PARAMS,
        Param("image_topic", "image", "source=topic: input image topic (remap it)"),
        Param(
            "transport",
            "raw",
            "raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage on <image_topic>/compressed",
            choices=("raw", "compressed"),
        ),
        Param("input_qos", "reliable", "QoS profile of the image input", choices=QOS_NAMES),
        Param("input_depth", 5, "image input queue depth", min=1, max=1000),
        Param("max_image_pixels", 16_777_216, "larger images are rejected as corrupt (16 MPix)", min=1),
        Param("resume_on_start", False, "resume (or begin) the job as soon as the node is active"),
        Param("status_period_s", 1.0, "period of ~/status publication", min=0.05, max=60.0),
    )

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        self._lock = threading.RLock()
        self.job: SynthesisJob | None = None
        self._thread: threading.Thread | None = None
        self._state = TrainingStatus.IDLE
        self._error = ""
        self._progress = Progress()
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._subscription = None
        self._status_pub = None
        self._status_timer = None
        self._resume_timer = None
        self._reset_counters()
        super().__init__(node_name, **kwargs)
        # services exist from the start, so a node that cannot configure still answers why
        self._services = [
            self.create_service(Trigger, "~/start", self._on_start),
            self.create_service(Trigger, "~/stop", self._on_stop),
            self.create_service(Trigger, "~/resume", self._on_resume),
        ]

    def _reset_counters(self) -> None:
        self.frames_received = 0
        self.frames_kept = 0
        self.bad_frames = 0
        self.last_bad_frame = ""
        self.last_bad_time: float | None = None

    # ----- parameters -------------------------------------------------------------------------------------------
    def validate_params(self, values: dict[str, Any]) -> list[str]:
        return JobConfig(**{k: values[k] for k in JOB_FIELDS}).problems()

    def job_config(self, params: dict[str, Any]) -> JobConfig:
        return JobConfig.from_dict({k: params[k] for k in JOB_FIELDS})

    # ----- lifecycle --------------------------------------------------------------------------------------------
    def configure_core(self, params: dict[str, Any]) -> None:
        cfg = self.job_config(params)
        with self._lock:
            self.job = SynthesisJob(cfg, on_progress=self._on_progress)
        self._status_pub = self.create_publisher(TrainingStatus, "~/status", _status_qos())
        self._status_timer = self.create_timer(float(params["status_period_s"]), self.publish_status,
                                               clock=STEADY_CLOCK)  # fmt: skip
        done = [s for s in STAGES if self.job.done(s)]
        if done:
            self.get_logger().info(f"{cfg.work_dir} holds a job with stages {done} done; ~/resume continues it")

    def activate_core(self) -> None:
        self.publish_status()
        if self.params.get("resume_on_start"):
            # after the transition: _launch requires the active state, which on_activate has not reached yet
            self._resume_timer = self.create_timer(0.0, self._resume_on_start, clock=STEADY_CLOCK)

    def _resume_on_start(self) -> None:
        self.destroy_timer(self._resume_timer)
        ok, message = self._launch(fresh=False)
        (self.get_logger().info if ok else self.get_logger().error)(f"resume_on_start: {message}")

    def deactivate_core(self) -> None:
        self._halt()

    def cleanup_core(self) -> None:
        self._halt()
        if self._status_timer is not None:
            self.destroy_timer(self._status_timer)
            self._status_timer = None
        if self._status_pub is not None:
            self.destroy_publisher(self._status_pub)
            self._status_pub = None

    def destroy_node(self) -> None:
        """Stop the job at its next step (MAF checkpoint written) before the node goes away."""
        try:
            self._halt()
        except Exception as exc:
            self.get_logger().debug(f"halt on destroy: {exc}")
        super().destroy_node()

    def _halt(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            if self.job is not None:
                self.job.stop()
            thread.join(timeout=JOIN_TIMEOUT_S)
        self._drop_subscription()

    # ----- services ---------------------------------------------------------------------------------------------
    def _on_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self._launch(fresh=True)
        return response

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self._launch(fresh=False)
        return response

    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self.job is None:
                response.success, response.message = False, f"no job is running (state {STATE_NAMES[self._state]})"
                return response
            self.job.stop()
            self._state = TrainingStatus.STOPPING
            stage = self._progress.stage
        self.publish_status()
        response.success = True
        response.message = f"stopping at the next step of stage {stage or '?'}; ~/resume continues from there"
        return response

    def _launch(self, fresh: bool) -> tuple[bool, str]:
        """Start (fresh) or resume the job in a background thread with the current parameter values."""
        if self.lifecycle_state != "active":
            why = f": {self.config_error}" if self.config_error else ""
            return False, f"node is {self.lifecycle_state}, not active{why}"
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False, f"a job is already running (stage {self._progress.stage}); call ~/stop first"
            try:
                params = self.read_params()  # `ros2 param set` between jobs takes effect here
                cfg = self.job_config(params)
            except ValueError as exc:
                return False, str(exc)
            self.params = params
            job = SynthesisJob(cfg, on_progress=self._on_progress)
            notes = []
            if fresh:
                if job.has_progress:
                    notes.append(f"removed the previous job's outputs in {cfg.work_dir}")
                job.reset()
            elif job.complete:
                return (
                    False,
                    f"the job in {cfg.work_dir} is complete (model in {self._model_dir(cfg)}); ~/start runs anew",
                )
            elif job.has_progress:
                done = [s for s in STAGES if job.done(s)]
                notes.append(f"continuing after stages {done}" if done else "continuing from the checkpoints")
                changed = sorted(k for k, v in job.state.get("config", {}).items() if asdict(cfg).get(k) != v)
                if changed:
                    notes.append(f"settings changed since the job began: {changed} (done stages are kept)")
            else:
                notes.append("nothing to continue: starting a new job")
            self.job = job
            self._state = TrainingStatus.RUNNING
            self._error = ""
            self._progress = Progress(message="starting")
            self._started_at, self._finished_at = time.monotonic(), None
            self._reset_counters()
            if cfg.source == "topic" and job.wants_frames:
                self._subscribe()
            self._thread = threading.Thread(target=self._run, args=(job,), name="synthesis_job", daemon=True)
            self._thread.start()
        self.publish_status()
        verb = "started" if fresh else "resumed"
        return True, f"job {verb} in {cfg.work_dir}" + (f" ({'; '.join(notes)})" if notes else "")

    def _run(self, job: SynthesisJob) -> None:
        try:
            job.run()
        except JobStopped:
            outcome, error = TrainingStatus.STOPPED, ""
            self.get_logger().info(f"job stopped in stage {self._progress.stage}; ~/resume continues it")
        except Exception as exc:  # any failure ends the job, never the node
            outcome, error = TrainingStatus.FAILED, f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"job failed in stage {self._progress.stage}: {error}\n{traceback.format_exc()}")
        else:
            outcome, error = TrainingStatus.DONE, ""
            self.get_logger().info(f"job done: model in {self._model_dir(job.config)}")
        with self._lock:
            self._state, self._error = outcome, error
            self._finished_at = time.monotonic()
        self.publish_status()

    def _on_progress(self, progress: Progress) -> None:
        with self._lock:
            previous = self._progress.stage
            self._progress = progress
        if progress.stage != previous:
            self.publish_status()

    @staticmethod
    def _model_dir(cfg: JobConfig) -> Path:
        return Path(cfg.work_dir) / "finetune" / "model"

    # ----- frames -----------------------------------------------------------------------------------------------
    def _subscribe(self) -> None:
        if self._subscription is not None:
            return
        qos = qos_from_name(self.params["input_qos"], self.params["input_depth"])
        topic = self.params["image_topic"]
        if self.params["transport"] == "compressed":
            self._subscription = self.create_subscription(
                CompressedImage, topic.rstrip("/") + "/compressed", self._on_image, qos
            )
        else:
            self._subscription = self.create_subscription(Image, topic, self._on_image, qos)

    def _drop_subscription(self) -> None:
        with self._lock:
            sub, self._subscription = self._subscription, None
        if sub is not None:
            try:
                self.destroy_subscription(sub)
            except Exception as exc:  # a context that is shutting down
                self.get_logger().debug(f"destroy subscription: {exc}")

    def _bad_frame(self, reason: str) -> None:
        with self._lock:
            self.bad_frames += 1
            self.last_bad_frame = reason
            self.last_bad_time = time.monotonic()
        self.get_logger().warn(f"unusable frame: {reason}", throttle_duration_sec=5.0)

    def _on_image(self, msg: Any) -> None:
        job = self.job
        with self._lock:
            self.frames_received += 1
        if job is None or not job.wants_frames:
            return
        limit = int(self.params["max_image_pixels"])
        try:
            rgb = (
                compressed_to_rgb(msg, max_pixels=limit)
                if isinstance(msg, CompressedImage)
                else image_to_rgb(msg, max_pixels=limit)
            )
        except ImageConversionError as exc:
            self._bad_frame(str(exc))
            return
        except Exception as exc:  # anything else about a message must not reach the executor
            self._bad_frame(f"{type(exc).__name__}: {exc}")
            return
        cfg = job.config
        if rgb.shape[0] < cfg.crop_height or rgb.shape[1] < cfg.crop_width:
            self._bad_frame(f"{rgb.shape[1]}x{rgb.shape[0]} image is smaller than the {cfg.crop_width}x"
                            f"{cfg.crop_height} crop")  # fmt: skip
            return
        if job.offer_frame(rgb):
            with self._lock:
                self.frames_kept += 1

    # ----- outputs ----------------------------------------------------------------------------------------------
    def publish_status(self) -> None:
        """Publish ``~/status`` now (timer, state changes, stage changes)."""
        pub = self._status_pub
        if pub is None:
            return
        with self._lock:  # the same lock as _launch, so a job that is just starting keeps its subscription
            thread = self._thread
            gathering = self.job is not None and self.job.wants_frames and thread is not None and thread.is_alive()
            if self._subscription is not None and not gathering:
                self._drop_subscription()  # gathering is over (or the job ended): stop deserialising images
        with self._lock:
            p, state, job = self._progress, self._state, self.job
            msg = TrainingStatus()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.state = state
            msg.stage = p.stage
            msg.progress = float(p.progress)
            msg.overall_progress = float(p.overall)
            msg.step = max(0, int(p.step))
            msg.total_steps = max(0, int(p.total_steps))
            msg.loss = float(p.loss)
            msg.message = self._error if state == TrainingStatus.FAILED else p.message
            if job is not None:
                done = state == TrainingStatus.DONE
                msg.output_dir = str(self._model_dir(job.config) if done else Path(job.config.work_dir))
        try:
            pub.publish(msg)
        except Exception as exc:  # shutting down
            self.get_logger().debug(f"status publish failed: {exc}")

    def health(self) -> Health:
        now = time.monotonic()
        with self._lock:
            p, state, job = self._progress, self._state, self.job
            elapsed = ((self._finished_at or now) - self._started_at) if self._started_at is not None else 0.0
            values: dict[str, Any] = {
                "state": STATE_NAMES[state],
                "stage": p.stage,
                "stage_progress": p.progress,
                "overall_progress": p.overall,
                "step": p.step,
                "total_steps": p.total_steps,
                "loss": p.loss,
                "message": p.message,
                "elapsed_s": elapsed,
                "source": job.config.source if job else "",
                "work_dir": job.config.work_dir if job else "",
                "stages_done": ",".join(s for s in STAGES if job is not None and job.done(s)),
                "frames_received": self.frames_received,
                "frames_kept": self.frames_kept,
                "bad_frames": self.bad_frames,
                "last_bad_frame": self.last_bad_frame,
                "error": self._error,
            }
            bad_recent = self.last_bad_time is not None and now - self.last_bad_time < BAD_FRAME_NOTICE_S
        if state == TrainingStatus.FAILED:
            return Health(ERROR, f"job failed in stage {p.stage}: {self._error}", values)
        if bad_recent:
            return Health(WARN, f"unusable input frames ({self.bad_frames}): {self.last_bad_frame}", values)
        if state in (TrainingStatus.RUNNING, TrainingStatus.STOPPING):
            verb = "running" if state == TrainingStatus.RUNNING else "stopping"
            return Health(OK, f"{verb}: {p.stage} {100 * p.progress:.0f}% ({p.message})", values)
        if state == TrainingStatus.DONE:
            return Health(OK, f"done: model in {self._model_dir(job.config)}", values)
        if job is not None and job.has_progress and not job.complete:
            done = values["stages_done"] or "none"
            text = f"unfinished job in {job.config.work_dir} (stages done: {done}); ~/resume continues it"
            return Health(OK, f"{STATE_NAMES[state].lower()}: {text}", values)
        return Health(OK, f"{STATE_NAMES[state].lower()}: ~/start begins a job", values)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``synthesis_trainer_node`` executable."""
    return run_node(lambda: SynthesisTrainerNode(), args=args, threads=2)


if __name__ == "__main__":
    sys.exit(main())
