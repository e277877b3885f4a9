"""Camera node overhead: (receipt → ``~/mask`` published) / backend inference time, with DDS transport separate.

Set-up, measured in one run: DeepLabV3-MobileNetV3 (untrained weights: speed does not depend on them) exported to
ONNX, ONNX Runtime on the CPU. For each resolution (640×480 and 1024×2048):

1. **baseline**: ``backend.infer`` on a street scene in this process (no ROS), p50 over the repetitions;
2. **node**: ``camera_anomaly_node`` as its own process; this process publishes the scene as ``sensor_msgs/Image``
   (rgb8, reliable) one frame at a time (the next only after the previous frame's mask arrived, so the node is never
   overloaded) and listens to ``~/mask`` and ``/diagnostics``. After two warm-up frames the node is deactivated and
   re-activated through its lifecycle services, which resets its statistics; then N frames are measured. The node
   reports, over exactly those frames, receipt → mask published (p50/p99), receipt → all outputs published
   (overlay + summary too, p99) and the backend inference time inside the node (p50).

**overhead = node latency p50 / node inference p50** (same frames, same process, so machine load affects both
alike; the issue's target is ≤ 1.2 at 1024×2048). DDS transport = end-to-end (publish here → mask received here)
minus the node's receipt → mask time, i.e. the image into the node plus the mask back, through Fast DDS.

Usage: python bench/bench_camera_node.py --out bench/results/camera_node.md [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, parser, write_result

REPO = Path(__file__).resolve().parents[1]
RESOLUTIONS = ((480, 640), (1024, 2048))


def make_model(root: Path) -> Path:
    import torch

    from flow_anomaly_ros.runtime.export import export_onnx
    from flow_anomaly_ros.segmentation import SegmentationSpec, build_model, save_segmentation_model

    torch.manual_seed(0)
    spec = SegmentationSpec(backbone="mobilenet_v3_large")
    model_dir = save_segmentation_model(root / "seg_mobilenet", build_model(spec.backbone).eval(), spec)
    export_onnx(model_dir)
    return model_dir


def baseline_ms(model_dir: Path, image: np.ndarray, repeat: int) -> float:
    from common import time_calls

    from flow_anomaly_ros.runtime import load_backend

    backend = load_backend("onnxruntime", model_dir)
    seconds = time_calls(lambda: backend.infer(image), repeat=repeat, warmup=2)
    backend.close()
    return float(np.median(seconds) * 1e3)


class Probe:
    """This process's side of the node run: publisher, mask/diagnostics subscribers, lifecycle client."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from flow_anomaly_ros.ros.qos import qos_from_name

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("camera_bench_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[tuple[int, int], float] = {}
        self.diagnostics: list[dict[str, str]] = []
        reliable = qos_from_name("reliable", 1)
        self.pub = self.node.create_publisher(Image, "/bench_cam/image", reliable)
        self.node.create_subscription(Image, "/camera_anomaly_node/mask", self._on_mask, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.lifecycle = self.node.create_client(ChangeState, "/camera_anomaly_node/change_state")

    def _on_mask(self, msg) -> None:
        self.received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.time()

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith("camera_anomaly_node"):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    def wait_for_node(self, timeout: float = 180.0) -> None:
        if not self.spin_until(lambda: self.pub.get_subscription_count() > 0, timeout):
            raise RuntimeError("camera_anomaly_node did not subscribe in time")

    def send(self, msg, timeout: float = 120.0) -> float:
        """Publish one frame stamped with the wall clock; returns the end-to-end seconds until its mask arrived."""
        now = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.pub.publish(msg)
        if not self.spin_until(lambda: key in self.received, timeout):
            raise RuntimeError("no mask received")
        return self.received[key] - now

    def transition(self, transition_id: int) -> None:
        from lifecycle_msgs.srv import ChangeState

        if not self.lifecycle.wait_for_service(timeout_sec=30.0):
            raise RuntimeError("no lifecycle service")
        request = ChangeState.Request()
        request.transition.id = transition_id
        future = self.lifecycle.call_async(request)
        if not self.spin_until(future.done, 60.0) or not future.result().success:
            raise RuntimeError(f"lifecycle transition {transition_id} failed")

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def node_run(model_dir: Path, image: np.ndarray, frames: int) -> dict[str, float]:
    from lifecycle_msgs.msg import Transition

    sys.path.insert(0, str(REPO / "test"))
    from rosutil import start_python, stop_process

    from flow_anomaly_ros.ros.image_conversion import array_to_image

    args = ["-m", "flow_anomaly_ros.ros.camera_node", "--ros-args"]
    for p in (
        f"model_path:={model_dir}",
        "backend:=onnxruntime",
        "image_topic:=/bench_cam/image",
        "diagnostics_period_s:=0.25",
        "input_timeout_s:=0.0",
    ):
        args += ["-p", p]
    proc = start_python(args)
    probe = Probe()
    try:
        msg = array_to_image(image, "rgb8")
        probe.wait_for_node()
        for _ in range(2):  # warm-up at this resolution (ONNX Runtime specialises on the first shapes)
            probe.send(msg)
        probe.transition(Transition.TRANSITION_DEACTIVATE)  # resets the node's statistics on re-activation
        probe.transition(Transition.TRANSITION_ACTIVATE)
        probe.wait_for_node()
        end_to_end = []
        for _ in range(frames):
            end_to_end.append(probe.send(msg))
            probe.spin_until(lambda: False, 0.05)  # let the overlay/summary go out; the node is idle again
        done = lambda: probe.diagnostics and probe.diagnostics[-1].get("frames_processed") == str(frames)  # noqa: E731
        if not probe.spin_until(done, 30.0):
            raise RuntimeError(f"diagnostics never reported {frames} processed frames: {probe.diagnostics[-1:]}")
        values = probe.diagnostics[-1]
    finally:
        probe.close()
        out = stop_process(proc)
        if proc.returncode not in (0, None):
            print(out, file=sys.stderr)
    latency = float(values["latency_p50_ms"])
    return {
        "inference_ms": float(values["inference_p50_ms"]),
        "latency_ms": latency,
        "latency_p99_ms": float(values["latency_p99_ms"]),
        "total_p99_ms": float(values["total_latency_p99_ms"]),
        "end_to_end_ms": float(np.median(end_to_end) * 1e3),
        "transport_ms": float(np.median(end_to_end) * 1e3) - latency,
        "dropped": float(values["frames_dropped"]),
    }


def main() -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="bench_camera_log_"))
    from flow_anomaly_ros.data.street_scenes import generate_scene

    start = time.monotonic()
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp))
        for h, w in RESOLUTIONS:
            frames = (6 if h < 1000 else 3) if args.quick else (20 if h < 1000 else 8)
            image = generate_scene(h, w, seed=1, num_anomalies=2).image
            base = baseline_ms(model_dir, image, repeat=frames)
            node = node_run(model_dir, image, frames)
            raw[f"{w}x{h}"] = {"baseline_inference_ms": base, **node}
            print(f"{w}x{h}: {json.dumps(raw[f'{w}x{h}'])}", flush=True)
            rows.append(
                [
                    f"{w}×{h}",
                    frames,
                    base,
                    node["inference_ms"],
                    f"{node['latency_ms']:.0f} / {node['latency_p99_ms']:.0f}",
                    f"**{node['latency_ms'] / node['inference_ms']:.2f}×**",
                    node["latency_ms"] / base,
                    node["total_p99_ms"],
                    node["transport_ms"],
                    node["end_to_end_ms"],
                ]
            )
    headers = [
        "input (W×H)",
        "frames",
        "backend infer p50, standalone (ms)",
        "infer p50 in node (ms)",
        "receipt→mask p50 / p99 (ms)",
        "overhead (receipt→mask / infer in node)",
        "receipt→mask / standalone infer",
        "receipt→all outputs p99 (ms)",
        "DDS transport p50: image in + mask out (ms)",
        "end-to-end p50 (ms)",
    ]
    body = (
        "DeepLabV3-MobileNetV3 on ONNX Runtime CPU, `camera_anomaly_node` in its own process, rgb8 input over Fast DDS "
        "(reliable, depth 1), one frame in flight. Target: overhead ≤ 1.2× at 1024×2048.\n\n"
        + markdown_table(headers, rows)
        + f"\n{'Quick mode. ' if args.quick else ''}Total {time.monotonic() - start:.0f} s. "
        "The machine is shared: absolute times vary with load; the overhead ratio compares the same frames."
        "\n\n```json\n" + json.dumps(raw, indent=1) + "\n```\n"
    )
    write_result(args.out, "Camera node overhead", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
