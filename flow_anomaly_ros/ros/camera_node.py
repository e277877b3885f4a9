"""``camera_anomaly_node``: dense anomaly segmentation of a camera stream (lifecycle node, thin wiring only).

Subscribes to ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) on ``image`` or, with ``transport:=compressed``,
``sensor_msgs/CompressedImage`` (jpeg/png) on ``image/compressed``; runs the segmentation backend of
:mod:`flow_anomaly_ros.runtime` (TensorRT, ONNX Runtime or torch; ``backend:=auto`` falls back and says why) and
publishes, with the input's header, at the input's resolution:

- ``~/mask`` (mono8, 255 = anomalous pixel), ``~/overlay`` (rgb8, anomalous pixels tinted; for RViz),
- ``~/score_map`` (32FC1 anomaly score, optional), ``~/semantic`` (mono8 trainIds, 19 = anomaly, optional),
- ``~/summary`` (``flow_anomaly_ros/msg/ImageAnomaly``: ratio, scores, regions from connected components, latency),
- ``/diagnostics``: input rate, processing latency p50/p99, dropped and bad frames, backend in use, and ERROR with
  the reason whenever the model cannot be loaded or the last frame was unusable.

Real-time behaviour: the subscription callback only drops the message into a one-slot mailbox; one worker thread
always takes the newest frame, so when inference is slower than the camera, stale frames are dropped and counted
instead of queued. For bag evaluation, ``pending_frames:=N`` (with ``input_depth`` >= N) keeps up to N frames in
order instead, so a CPU stall does not cost frames (the demo's live run uses it). Inputs use reliable QoS with
depth 1 by default (best effort loses fragmented multi-MB images, ``shared/notes/ros2-from-pypi.md``). With
``lazy:=true`` frames are skipped while nobody subscribes to an output.

Frame processing (score map, threshold, resizing, regions, tint) is :mod:`flow_anomaly_ros.ros.camera_pipeline`;
message conversion is :mod:`flow_anomaly_ros.ros.image_conversion`. Parameters: :data:`CameraAnomalyNode.PARAMS`
and ``config/camera_anomaly.yaml``.

Run::

    ros2 run flow_anomaly_ros camera_anomaly_node --ros-args --params-file config/camera_anomaly.yaml \\
        -p model_path:=models/seg -r image:=/camera/image_raw
    python -m flow_anomaly_ros.ros.camera_node --ros-args -p model_path:=models/seg/model.onnx
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from flow_anomaly_ros.msg import ImageAnomaly
from flow_anomaly_ros.ros.camera_pipeline import FrameMailbox, FrameProcessor, FrameResult
from flow_anomaly_ros.ros.diagnostics import ERROR, OK, WARN, Health
from flow_anomaly_ros.ros.image_conversion import (
    ImageConversionError,
    array_to_image,
    compressed_to_rgb,
    image_to_rgb,
)
from flow_anomaly_ros.ros.managed_node import ManagedAnomalyNode, Param, run_node
from flow_anomaly_ros.ros.qos import QOS_NAMES, incompatible_publishers, qos_from_name
from flow_anomaly_ros.runtime.loader import BACKEND_KINDS
from flow_anomaly_ros.runtime.tensorrt_plan import engine_options
from flow_anomaly_ros.segmentation.spec import SCORE_METHODS
from flow_anomaly_ros.stats import LatencyWindow, RateMeter

NODE_NAME = "camera_anomaly_node"
BACKENDS = ("auto", *(k for k in BACKEND_KINDS if k != "auto"))  # auto first: the default
OUTPUTS = ("mask", "overlay", "score_map", "semantic", "summary")


def _size_check(value: Any) -> str | None:
    values = list(value)
    if len(values) != 2 or any(int(v) < 0 for v in values) or (0 in values and any(values)):
        return "must be [height, width] (both >= 16) or [0, 0] for the model's own size"
    if any(values) and min(values) < 16:
        return "height and width must be >= 16"
    return None


def _color_check(value: Any) -> str | None:
    values = list(value)
    if len(values) != 3 or any(not 0 <= int(v) <= 255 for v in values):
        return "must be [r, g, b] with values 0..255"
    return None


def resolve_model_path(model_path: str) -> str:
    """``model_path`` as given if it is absolute or exists from the working directory, else the same relative path
    in the installed package share (``ros2 launch`` runs nodes from wherever the user is) or the source tree."""
    path = Path(model_path).expanduser()
    if path.is_absolute() or path.exists() or not str(model_path).strip():
        return model_path
    roots = [Path(__file__).resolve().parents[2]]  # source tree / editable install
    try:
        from ament_index_python.packages import get_package_share_directory

        roots.insert(0, Path(get_package_share_directory("flow_anomaly_ros")))
    except Exception:  # not installed with colcon, or AMENT_PREFIX_PATH unset
        pass
    for root in roots:
        if (root / path).exists():
            return str(root / path)
    return model_path


DERIVED_ONNX = re.compile(r"\.(fp16|int8-qdq)\.[0-9a-f]{12}\.onnx$")  # runtime/tensorrt_onnx.variant_path


def mirror_model_into(model_path: str, cache_dir: str) -> str:
    """The model path to load; with an engine cache directory, a mirror of the model made of symlinks inside it.

    The runtime caches TensorRT engines next to the ONNX file it loads. Loading the model through a mirror in
    ``cache_dir`` therefore puts the engines there, which is what a read-only model location (``/opt``, a package's
    share directory) needs. Without ``cache_dir``, or for a path that does not exist (the backend reports it), the
    path is returned unchanged.
    """
    source = Path(model_path).expanduser().resolve()
    if not cache_dir or not source.exists():
        return model_path
    mirror = Path(cache_dir).expanduser() / (source.stem if source.is_file() else source.name)
    mirror.mkdir(parents=True, exist_ok=True)
    files = [source] if source.is_file() else [f for f in source.iterdir() if f.is_file()]
    for target in files:
        if ".engine" in target.name or target.name.endswith(".calib") or DERIVED_ONNX.search(target.name):
            continue  # engines and the FP16 / Q/DQ ONNX copies they are built from belong to the cache
        link = mirror / target.name
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.exists():
            link.symlink_to(target)
    return str(mirror / source.name) if source.is_file() else str(mirror)


class CameraAnomalyNode(ManagedAnomalyNode):
    """Lifecycle node: configure loads the backend, activate subscribes and starts the worker."""

    PARAMS = (
        Param("image_topic", "image", "input topic (remap it); with transport=compressed, <image_topic>/compressed"),
        Param(
            "transport",
            "raw",
            "raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage (jpeg/png)",
            choices=("raw", "compressed"),
        ),
        Param(
            "backend",
            "auto",
            "inference backend; auto falls back tensorrt -> onnxruntime -> torch",
            choices=BACKENDS,
        ),
        Param("model_path", "", "segmentation model directory or .onnx file (required)"),
        Param("device", "cpu", "cpu, cuda, cuda:N or auto (auto/cuda try the GPU backends first)"),
        Param("precision", "fp32", "fp32, fp16 or int8 (fp16/int8 need TensorRT)", choices=("fp32", "fp16", "int8")),
        Param(
            "engine_cache_dir",
            "",
            "directory for TensorRT engines (empty = next to the ONNX file); the model is "
            "loaded through symlinks in it",
        ),
        Param(
            "input_size",
            [0, 0],
            "network input [height, width]; [0, 0] = the model's size, else the image's",
            check=_size_check,
        ),
        Param(
            "engine_shape",
            [0, 0],
            "camera [height, width] the TensorRT engine is built for when neither the model nor input_size fixes "
            "the network size; [0, 0] = any size 32x32..2160x3840 (seg build-engine --shape HxW builds the same)",
            check=_size_check,
        ),
        Param("score_method", "", "per-pixel score; empty = the model's default", choices=("", *SCORE_METHODS)),
        Param("threshold_from_model", True, "use the model's calibrated threshold for score_method"),
        Param("threshold", 0.5, "per-pixel threshold (score >= threshold is anomalous) if threshold_from_model=false"),
        Param("min_region_area", 64, "regions smaller than this many image pixels are not reported", min=0),
        Param("max_regions", 32, "at most this many regions (largest first) in ~/summary", min=0, max=1000),
        Param("publish_overlay", True, "publish ~/overlay (rgb8, anomalous pixels tinted)"),
        Param("publish_score_map", False, "publish ~/score_map (32FC1 anomaly score at the image size)"),
        Param("publish_semantic", False, "publish ~/semantic (mono8 trainIds, anomaly = 19)"),
        Param("overlay_color", [255, 0, 255], "tint colour [r, g, b] of anomalous pixels", check=_color_check),
        Param("overlay_alpha", 0.6, "tint strength 0..1", min=0.0, max=1.0),
        Param(
            "input_qos",
            "reliable",
            "input QoS profile (reliable: large images survive fragmentation)",
            choices=QOS_NAMES,
        ),
        Param("input_depth", 1, "input queue depth (1: only the newest frame matters)", min=1, max=100),
        Param(
            "pending_frames",
            1,
            "frames waiting for inference (1: only the newest, the vehicle setting; N: in order, the oldest beyond N "
            "dropped and counted, for replaying a bag where every frame counts; raise input_depth with it)",
            min=1,
            max=1000,
        ),
        Param("output_qos", "reliable", "QoS profile of the outputs", choices=QOS_NAMES),
        Param("output_depth", 1, "output queue depth", min=1, max=100),
        Param("lazy", False, "run inference only while something subscribes to an output"),
        Param("max_image_pixels", 16_777_216, "larger images are rejected as corrupt (16 MPix)", min=1),
        Param("input_timeout_s", 2.0, "WARN on /diagnostics when no image arrived for this long (0 = never)", min=0.0),
        Param("warmup", True, "run one inference at configure time so the first frame is not slow"),
    )

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        self.backend: Any = None
        self.backend_selection = ""  # how backend=auto chose (each candidate and why it was skipped)
        self.processor: FrameProcessor | None = None
        self._pubs: dict[str, Any] = {}
        self._subscription = None
        self._input: tuple[str, Any] | None = None  # (topic, QoS) of the subscription, for the QoS check
        self._worker: threading.Thread | None = None
        self._running = threading.Event()
        self._mailbox = FrameMailbox()
        self._lock = threading.Lock()
        self._reset_counters()
        super().__init__(node_name, **kwargs)

    # ----- parameters -------------------------------------------------------------------------------------------
    def validate_params(self, values: dict[str, Any]) -> list[str]:
        problems = []
        if not str(values["model_path"]).strip():
            problems.append("model_path is empty: set it to a segmentation model directory or .onnx file")
        device = str(values["device"])
        if device not in ("cpu", "auto", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
            problems.append(f"device={device!r} must be cpu, cuda, cuda:N or auto")
        return problems

    def _reset_counters(self) -> None:
        self.rate = RateMeter()
        self.latency = LatencyWindow(500)  # receipt -> mask published
        self.total_latency = LatencyWindow(500)  # receipt -> summary published (all outputs)
        self.inference = LatencyWindow(500)
        self.received = 0
        self.processed = 0
        self.bad_frames = 0
        self.failed_frames = 0
        self.lazy_skipped = 0
        self.publish_errors = 0
        self.last_receipt: float | None = None
        self.frame_error: str | None = None  # reason the newest frame could not be used (None after a good one)

    # ----- lifecycle --------------------------------------------------------------------------------------------
    def configure_core(self, params: dict[str, Any]) -> None:
        from flow_anomaly_ros.runtime import load_backend

        model_path = mirror_model_into(resolve_model_path(params["model_path"]), params["engine_cache_dir"])
        self.progress = (
            f"opening the {params['backend']} backend for {model_path} (building a TensorRT engine takes minutes; "
            "build it beforehand with `flow-anomaly seg build-engine`)"
        )
        # input_size and engine_shape shape the TensorRT profile before the engine is built (the same function
        # as `seg build-engine`, so an engine built there is found here)
        engine = engine_options(params["input_size"], params["engine_shape"])
        self.backend = load_backend(
            params["backend"], model_path, device=params["device"], precision=params["precision"], **engine
        )
        spec = self.backend.spec
        if any(params["input_size"]):
            spec.input_size = (int(params["input_size"][0]), int(params["input_size"][1]))
        method = params["score_method"] or spec.score_method
        threshold = spec.threshold_for(method) if params["threshold_from_model"] else float(params["threshold"])
        self.processor = FrameProcessor(
            self.backend,
            method,
            threshold,
            min_region_area=params["min_region_area"],
            max_regions=params["max_regions"],
            overlay_color=tuple(int(v) for v in params["overlay_color"]),
            overlay_alpha=params["overlay_alpha"],
        )
        if params["warmup"]:  # first calls of ORT/torch/scipy are slow; do them before the first real frame
            h, w = spec.input_size or engine["opt_hw"] or (480, 640)
            self.processor.process(np.zeros((h, w, 3), np.uint8))
        qos = qos_from_name(params["output_qos"], params["output_depth"])
        wanted = {"mask": True, "overlay": params["publish_overlay"], "score_map": params["publish_score_map"]}
        wanted.update({"semantic": params["publish_semantic"], "summary": True})
        for name, enabled in wanted.items():
            if enabled:
                self._pubs[name] = self.create_publisher(ImageAnomaly if name == "summary" else Image, f"~/{name}", qos)
        self.backend_selection = "; ".join(f"{n} -> {why}" for n, why in getattr(self.backend, "selection", []))
        self.get_logger().info(
            f"backend {self.backend.name} ({self.backend_selection}); score {method} >= {threshold:g}; "
            f"outputs {', '.join(self._pubs)}"
        )

    def activate_core(self) -> None:
        self._reset_counters()
        qos = qos_from_name(self.params["input_qos"], self.params["input_depth"])
        topic = self.params["image_topic"]
        self._input = (topic.rstrip("/") + "/compressed" if self.params["transport"] == "compressed" else topic, qos)
        if self.params["transport"] == "compressed":
            self._subscription = self.create_subscription(
                CompressedImage, topic.rstrip("/") + "/compressed", self._on_image, qos
            )
        else:
            self._subscription = self.create_subscription(Image, topic, self._on_image, qos)
        self._mailbox = FrameMailbox(self.params["pending_frames"])  # fresh drop counter, fresh statistics
        self._running.set()
        self._worker = threading.Thread(target=self._work, name="camera_anomaly_worker", daemon=True)
        self._worker.start()

    def deactivate_core(self) -> None:
        self._running.clear()
        self._mailbox.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._input = None

    def cleanup_core(self) -> None:
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self.backend is not None:
            self.backend.close()
        self.backend = None
        self.processor = None

    def destroy_node(self) -> None:
        """Stop the worker before the publishers go away (clean SIGINT/SIGTERM shutdown)."""
        try:
            self.deactivate_core()
        except Exception as exc:  # a context that is already shut down cannot destroy subscriptions
            self.get_logger().debug(f"deactivate on destroy: {exc}")
        super().destroy_node()

    # ----- data path --------------------------------------------------------------------------------------------
    def _wanted(self) -> bool:
        """False in lazy mode while nobody subscribes to any output."""
        if not self.params.get("lazy"):
            return True
        return any(pub.get_subscription_count() > 0 for pub in self._pubs.values())

    def _on_image(self, msg: Any) -> None:
        receipt = time.perf_counter()
        with self._lock:
            self.received += 1
            self.last_receipt = receipt
            self.rate.tick(receipt)
            if not self._wanted():
                self.lazy_skipped += 1
                return
        self._mailbox.put((msg, receipt))

    def _work(self) -> None:
        while self._running.is_set():
            item = self._mailbox.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as exc:  # never let one frame kill the worker
                with self._lock:
                    self.failed_frames += 1
                    self.frame_error = f"processing failed: {type(exc).__name__}: {exc}"
                self.get_logger().error(self.frame_error, throttle_duration_sec=5.0)

    def _to_rgb(self, msg: Any):
        limit = int(self.params["max_image_pixels"])
        if isinstance(msg, CompressedImage):
            return compressed_to_rgb(msg, max_pixels=limit)
        return image_to_rgb(msg, max_pixels=limit)

    def _publish(self, name: str, msg: Any) -> None:
        pub = self._pubs.get(name)
        if pub is None:
            return
        try:
            pub.publish(msg)
        except Exception as exc:  # reliable + large messages under load can raise "cannot publish data"
            with self._lock:
                self.publish_errors += 1
            self.get_logger().warn(f"publishing ~/{name} failed: {exc}", throttle_duration_sec=5.0)

    def _process(self, msg: Any, receipt: float) -> None:
        try:
            rgb = self._to_rgb(msg)
        except ImageConversionError as exc:
            with self._lock:
                self.bad_frames += 1
                self.frame_error = f"bad input image: {exc}"
            self.get_logger().warn(self.frame_error, throttle_duration_sec=5.0)
            return
        processor = self.processor
        if processor is None:
            return
        frame = processor.process(rgb)
        header = msg.header
        self._publish("mask", array_to_image(frame.mask, "mono8", header))
        mask_done = time.perf_counter()
        if "overlay" in self._pubs:
            self._publish("overlay", array_to_image(processor.overlay(rgb, frame), "rgb8", header))
        if "score_map" in self._pubs:
            self._publish("score_map", array_to_image(processor.score_image(frame), "32FC1", header))
        if "semantic" in self._pubs:
            self._publish("semantic", array_to_image(processor.semantic_image(frame), "mono8", header))
        summary = self._summary(frame, header)
        done = time.perf_counter()
        summary.latency_ms = float((done - receipt) * 1e3)
        self._publish("summary", summary)
        with self._lock:
            self.processed += 1
            self.frame_error = None
            self.latency.add(mask_done - receipt)
            self.total_latency.add(done - receipt)
            self.inference.add(frame.inference_s)

    def _summary(self, frame: FrameResult, header: Any) -> ImageAnomaly:
        msg = ImageAnomaly()
        msg.header = header
        msg.anomaly_ratio = frame.anomaly_ratio
        msg.max_score = frame.max_score
        msg.mean_score = frame.mean_score
        msg.threshold = frame.threshold
        msg.is_anomaly = bool(frame.regions)
        msg.regions = [
            RegionOfInterest(x_offset=r.x, y_offset=r.y, width=r.width, height=r.height) for r in frame.regions
        ]
        msg.region_scores = [float(r.max_score) for r in frame.regions]
        msg.backend = str(self.backend.name) if self.backend is not None else ""
        msg.score_method = self.processor.method if self.processor is not None else ""
        return msg

    # ----- diagnostics ------------------------------------------------------------------------------------------
    def health(self) -> Health:
        now = time.perf_counter()
        with self._lock:
            values: dict[str, Any] = {
                "backend": self.backend.name if self.backend is not None else "none",
                "backend_selection": self.backend_selection,
                "model_path": self.params.get("model_path", ""),
                "score_method": self.processor.method if self.processor else "",
                "threshold": self.processor.threshold if self.processor else float("nan"),
                "input_rate_hz": self.rate.rate_hz(now),
                "frames_received": self.received,
                "frames_processed": self.processed,
                "frames_dropped": self._mailbox.dropped,
                "bad_frames": self.bad_frames,
                "failed_frames": self.failed_frames,
                "lazy_skipped": self.lazy_skipped,
                "publish_errors": self.publish_errors,
                "latency_p50_ms": self.latency.percentile_ms(50),
                "latency_p99_ms": self.latency.percentile_ms(99),
                "total_latency_p99_ms": self.total_latency.percentile_ms(99),
                "inference_p50_ms": self.inference.percentile_ms(50),
            }
            frame_error, last = self.frame_error, self.last_receipt
        if frame_error is not None:
            return Health(ERROR, frame_error, values)
        if self._input is not None:
            mismatched = incompatible_publishers(self, *self._input)
            if mismatched:
                values["incompatible_publishers"] = "; ".join(mismatched)
                return Health(
                    WARN,
                    f"{len(mismatched)} publisher(s) on {self.resolve_topic_name(self._input[0])} have QoS "
                    f"incompatible with input_qos={self.params['input_qos']} and deliver nothing (set input_qos: "
                    f"sensor_data or best_effort for a best-effort driver): {values['incompatible_publishers']}",
                    values,
                )
        timeout = float(self.params.get("input_timeout_s", 0.0))
        topic = self.params.get("image_topic", "image")
        if self.params.get("lazy") and not self._wanted():
            return Health(OK, "lazy: no subscribers to the outputs, inference paused", values)
        if timeout > 0 and (last is None or now - last > timeout):
            waited = "never received" if last is None else f"none for {now - last:.1f} s"
            return Health(WARN, f"no images on {self.resolve_topic_name(topic)} ({waited})", values)
        return Health(OK, f"processing at {values['input_rate_hz']:.1f} Hz input", values)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``camera_anomaly_node`` executable."""
    return run_node(lambda: CameraAnomalyNode(), args=args)


if __name__ == "__main__":
    sys.exit(main())
