"""The demo report: ``demo/report/index.html`` with PNG figures, from the offline and live evaluations.

Figures: the IMU signals and the detector's score over time with the injected intervals (ground truth) and the
detections; the detector comparison; camera frames with ground truth and the node's mask; the per-frame camera
scores. Tables: data provenance (what is real, what is injected or generated), detector comparison, camera
metrics, latency, offline-versus-live agreement, and how long each step took. The HTML is self-contained apart
from the PNGs next to it (no JavaScript, no network).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.data.bags import BagReader

NS = 1_000_000_000
_STREAM_COLORS = {"imu": "#d62728", "can": "#ff7f0e", "gps": "#9467bd", "camera": "#2ca02c"}


def fmt_value(v: Any) -> str:
    """A metric as the report and ``flow-anomaly evaluate`` print it (3 decimals, yes/no, – for NaN)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(float(v)):
            return "–"
        return f"{float(v):.3f}" if abs(float(v)) < 1000 else f"{float(v):.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v)
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table from dict rows (columns = union of keys, in first-seen order)."""
    if not rows:
        return "<p><em>(no rows)</em></p>"
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt_value(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def scalar_items(d: dict[str, Any]) -> dict[str, Any]:
    """The numeric entries of a metrics dict (the table columns)."""
    return {k: v for k, v in d.items() if isinstance(v, (int, float, bool, np.integer, np.floating))}


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------


def _imu_from_bag(bag: Path, topic: str, decimate: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from flow_anomaly_ros.data.bags import registry

    reg = registry()
    t, acc, gyr = [], [], []
    with BagReader(bag) as reader:
        for i, m in enumerate(reader.messages([topic])):
            if i % decimate:
                continue
            msg = reg.deserialize(m.data, m.msgtype)
            t.append(m.stamp_ns / NS)
            a, w = msg.linear_acceleration, msg.angular_velocity
            acc.append((a.x, a.y, a.z))
            gyr.append((w.x, w.y, w.z))
    return np.array(t), np.array(acc).reshape(-1, 3), np.array(gyr).reshape(-1, 3)


def _shade(ax: Any, intervals: list[dict[str, Any]], t0: float, streams: Sequence[str]) -> None:
    for iv in intervals:
        if iv.get("stream") in streams:
            ax.axvspan(iv["start_s"] - t0, iv["end_s"] - t0, color=_STREAM_COLORS.get(iv["stream"], "grey"), alpha=0.18)


def plot_timeseries(out: Path, bag: Path, truth: dict[str, Any], windows: Any, detector: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t, acc, gyr = _imu_from_bag(bag, truth["topics"]["imu"])
    t0 = truth["start_s"]
    intervals = truth["intervals"]
    fig, axes = plt.subplots(3, 1, figsize=(13, 8.5), sharex=True)
    for k, name in enumerate("xyz"):
        axes[0].plot(t - t0, acc[:, k], lw=0.6, label=f"accel {name}")
        axes[1].plot(t - t0, gyr[:, k], lw=0.6, label=f"gyro {name}")
    axes[0].set_ylabel("m/s²")
    axes[1].set_ylabel("rad/s")
    for ax in axes:
        _shade(ax, intervals, t0, ("imu", "can", "gps"))
    axes[0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[1].legend(loc="upper right", fontsize=7, ncol=3)
    if windows is not None and len(windows):
        valid = windows.status == 0
        axes[2].plot(windows.end_s - t0, windows.score, lw=0.8, color="k", label=f"{detector} score")
        axes[2].plot(windows.end_s - t0, windows.threshold, lw=0.8, ls="--", color="C3", label="threshold")
        det = valid & windows.is_anomaly
        axes[2].scatter(windows.end_s[det] - t0, windows.score[det], s=8, color="C3", zorder=3, label="detection")
        bad = ~valid
        if bad.any():
            axes[2].scatter(
                windows.end_s[bad] - t0, windows.score[bad], s=6, color="grey", zorder=2, label="not valid (status)"
            )
        finite = windows.score[np.isfinite(windows.score)]
        if len(finite):
            lo, med, hi = np.percentile(finite, [0.5, 50, 100])
            if hi - med > 100 * max(1e-9, abs(med - lo)):  # a few huge scores: log scale keeps the rest visible
                axes[2].set_yscale("symlog", linthresh=max(1.0, abs(med) * 2))
            else:
                axes[2].set_ylim(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo))
    axes[2].set_ylabel("anomaly score")
    axes[2].set_xlabel("time in bag [s]")
    handles, labels = axes[2].get_legend_handles_labels()
    handles += [Patch(color=_STREAM_COLORS[s], alpha=0.3) for s in ("imu", "can", "gps")]
    labels += ["injected IMU fault", "injected CAN attack", "injected GPS jump"]
    axes[2].legend(handles, labels, loc="upper right", fontsize=7, ncol=4)
    axes[0].set_title(f"Real KITTI IMU with injected faults; {detector} window scores ({label}) vs ground truth")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_detectors(out: Path, ts_metrics: dict[str, dict[str, Any]], keys: Sequence[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ts_metrics)
    keys = [k for k in keys if any(isinstance(ts_metrics[n].get(k), (int, float)) for n in names)]
    if not keys:
        return []
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(keys) * max(1, len(names)) / 3, 3.8))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(keys))
    for i, n in enumerate(names):
        vals = [float(ts_metrics[n].get(k, np.nan)) for k in keys]
        ax.bar(x + i * width, vals, width, label=n)
    ax.set_xticks(x + width * (len(names) - 1) / 2, keys)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Time-series detectors on the demo bag (offline, same windows)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return keys


def _select_frames(camera: list[Any], labels: dict[int, np.ndarray], n: int) -> list[Any]:
    """A few telling frames: detected anomalies, missed ones, false alarms, a clean frame."""
    tp = [c for c in camera if c.stamp_ns in labels and labels[c.stamp_ns].any() and c.is_anomaly]
    fn = [c for c in camera if c.stamp_ns in labels and labels[c.stamp_ns].any() and not c.is_anomaly]
    fp = [c for c in camera if c.stamp_ns in labels and not labels[c.stamp_ns].any() and c.is_anomaly]
    tn = [c for c in camera if c.stamp_ns in labels and not labels[c.stamp_ns].any() and not c.is_anomaly]
    picked: list[Any] = []
    for group, k in ((tp, 2), (fn, 1), (fp, 1), (tn, 1), (tp, n)):
        for c in group:
            if len(picked) >= n:
                break
            if c not in picked and k > 0:
                picked.append(c)
                k -= 1
    return sorted(picked, key=lambda c: c.stamp_ns)


def plot_camera_frames(
    out: Path, bag: Path, truth: dict[str, Any], camera: list[Any], labels: dict[int, np.ndarray], n: int = 5
) -> list[dict[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flow_anomaly_ros.data.bags import registry

    chosen = _select_frames(camera, labels, n)
    if not chosen:
        return []
    wanted = {c.stamp_ns for c in chosen}
    images: dict[int, np.ndarray] = {}
    reg = registry()
    with BagReader(bag) as reader:
        for m in reader.messages([truth["topics"]["camera"]]):
            if m.stamp_ns in wanted:
                msg = reg.deserialize(m.data, m.msgtype)
                images[m.stamp_ns] = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
    t0 = truth["start_s"]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(12, 2.3 * len(chosen) + 0.4), squeeze=False)
    rows = []
    for r, c in enumerate(chosen):
        img = images[c.stamp_ns]
        gt = labels[c.stamp_ns]
        over = img.astype(np.float32).copy()
        over[c.mask] = 0.4 * over[c.mask] + 0.6 * np.array([255, 0, 255], np.float32)
        gt_img = img.astype(np.float32).copy()
        gt_img[gt] = 0.4 * gt_img[gt] + 0.6 * np.array([0, 255, 255], np.float32)
        axes[r][0].imshow(img)
        axes[r][1].imshow(gt_img.astype(np.uint8))
        axes[r][2].imshow(over.astype(np.uint8))
        if c.scores is not None:
            axes[r][2].contour(c.scores, levels=[0.5], colors="yellow", linewidths=0.5)
        t = c.stamp_ns / NS - t0
        axes[r][0].set_ylabel(f"t = {t:.1f} s", fontsize=8)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
        iou = float(np.sum(gt & c.mask) / max(1, np.sum(gt | c.mask)))
        rows.append(
            {
                "t [s]": round(t, 2),
                "ground truth": "anomaly" if gt.any() else "clean",
                "node says": "anomaly" if c.is_anomaly else "clean",
                "anomalous pixels (truth)": int(gt.sum()),
                "flagged pixels": int(c.mask.sum()),
                "IoU": iou,
            }
        )
    axes[0][0].set_title("camera frame (generated scene)", fontsize=9)
    axes[0][1].set_title("ground truth anomaly (cyan)", fontsize=9)
    axes[0][2].set_title("node mask (magenta)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return rows


def _camera_model_note(info: dict[str, Any] | None) -> str:
    """One paragraph: which base the camera model was fine-tuned from and how its threshold was calibrated."""
    if not info:
        return ""
    cal = info.get("calibration") or {}
    rates = ""
    if cal.get("frames"):
        pixels = 100 * (cal.get("pixel_rate") or 0)
        rates = (f" On the {cal['frames']} clean calibration frames it flags {pixels:.3f} % "
                 f"of the pixels, raises an alarm in {100 * (cal.get('frame_alarm_rate') or 0):.1f} % of the frames, "
                 f"and no pixel position fires in more than {100 * (cal.get('max_position_rate') or 0):.1f} % of "
                 "them.")  # fmt: skip
    return (
        f"<p class='note'>Camera model: fine-tuned for {info.get('fine_tuning_steps')} steps with "
        f"{html.escape(str(info.get('negatives')))} from <code>{html.escape(str(info.get('base')))}</code>; "
        f"threshold {float(info.get('threshold') or 0.5):.3f} on the anomaly-class probability, chosen on "
        f"anomaly-free frames ({html.escape(str(cal.get('rule') or 'default'))}).{rates}</p>"
    )


def plot_camera_scores(out: Path, truth: dict[str, Any], camera: list[Any], labels: dict[int, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = truth["start_s"]
    t = np.array([c.stamp_ns / NS - t0 for c in camera])
    ratio = np.array([float(c.mask.mean()) for c in camera])
    gt = np.array([float(labels[c.stamp_ns].mean()) if c.stamp_ns in labels else np.nan for c in camera])
    fig, ax = plt.subplots(figsize=(13, 2.8))
    ax.plot(t, gt * 100, "o-", ms=3, lw=0.8, color="C2", label="anomalous pixels, ground truth [%]")
    ax.plot(t, ratio * 100, "x-", ms=3, lw=0.8, color="C6", label="flagged pixels, node [%]")
    flagged = np.array([c.is_anomaly for c in camera])
    ax.scatter(t[flagged], np.zeros(flagged.sum()), marker="|", s=80, color="C3", label="frame flagged (summary)")
    ax.set_xlabel("time in bag [s]")
    ax.set_ylabel("% of pixels")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Camera: per-frame anomaly area, ground truth vs node")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:.92em}
.real{color:#1a7f37;font-weight:600}.gen{color:#b35900;font-weight:600}code{background:#f4f4f4;padding:0 .25em}
"""


def _headline(offline: Any, live: Any | None, det: str) -> str:
    """One paragraph with the numbers a reader looks for first."""
    shown = live or offline
    m = shown.metrics.get("timeseries", {}).get(det, {})
    cam = shown.metrics.get("camera", {})
    mode = "live over DDS" if live is not None else "offline"
    parts = []
    if m:
        nan = float("nan")
        parts.append(
            f"time series ({det}, {mode}): event recall {fmt_value(m.get('event_recall', nan))} "
            f"of {fmt_value(m.get('events', 0))} injected faults, ROC-AUC {fmt_value(m.get('roc_auc', nan))}, "
            f"AP {fmt_value(m.get('ap', nan))}, mean detection delay {fmt_value(m.get('mean_delay_s', nan))} s"
        )
    if cam:
        nan = float("nan")
        parts.append(
            f"camera ({mode}): pixel AP {fmt_value(cam.get('ap', nan))}, AUROC "
            f"{fmt_value(cam.get('auroc', nan))}, FPR95 {fmt_value(cam.get('fpr95', nan))}, anomalous frames "
            f"found {fmt_value(cam.get('frame_recall', nan))} (precision {fmt_value(cam.get('frame_precision', 0.0))})"
        )
    return "<p><b>Headline.</b> " + html.escape("; ".join(parts)) + ".</p>" if parts else ""


def _provenance_rows(truth: dict[str, Any]) -> list[dict[str, Any]]:
    counts = truth.get("message_counts", {})
    rows = []
    for stream, topic in truth["topics"].items():
        prov = truth["provenance"].get(stream, "")
        kind = "real" if prov.startswith("real") else "generated"
        injected = sorted({iv["kind"] for iv in truth["intervals"] if iv.get("stream") == stream})
        if stream == "camera":
            injected = sorted({k for f in truth["camera_frames"] for k in f["kinds"]})
        rows.append(
            {
                "stream": stream,
                "topic": topic,
                "messages": counts.get(topic, 0),
                "data": kind,
                "source": prov,
                "anomalies (all injected/generated)": ", ".join(injected) or "–",
            }
        )
    return rows


def write_report(
    out_dir: str | Path,
    bag: str | Path,
    offline: Any,
    live: Any | None = None,
    agreement: dict[str, Any] | None = None,
    timings: list[dict[str, Any]] | None = None,
    extra_notes: Sequence[str] = (),
    reproduce: str = "",
) -> Path:
    """Write ``index.html`` and the PNGs into ``out_dir``; returns the path of index.html."""
    from flow_anomaly_ros.demo.recording import load_camera_labels, load_ground_truth

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bag = Path(bag)
    truth = load_ground_truth(bag)
    labels = load_camera_labels(bag)
    shown = live or offline
    det = offline.metrics.get("deployed_detector", next(iter(offline.detectors)))

    plot_timeseries(
        out_dir / "timeseries.png", bag, truth, shown.detectors.get(det), det, "live over DDS" if live else "offline"
    )
    ts_metrics = offline.metrics.get("timeseries", {})
    comparison_keys = ("roc_auc", "average_precision", "f1", "range_f1", "event_recall", "vus_pr")
    plotted = plot_detectors(out_dir / "detectors.png", ts_metrics, comparison_keys)
    frame_rows = plot_camera_frames(out_dir / "camera_frames.png", bag, truth, shown.camera, labels)
    plot_camera_scores(out_dir / "camera_scores.png", truth, shown.camera, labels)

    det_rows = [{"detector": n, **scalar_items(m)} for n, m in ts_metrics.items()]
    per_kind = []
    for n, m in ts_metrics.items():
        recall, auc = m.get("per_fault_recall") or {}, m.get("per_fault_auc") or {}
        for kind in sorted(set(recall) | set(auc)):
            per_kind.append({"detector": n, "fault type": kind, "event recall": recall.get(kind, float("nan")),
                             "ROC-AUC (fault windows vs clean)": auc.get(kind, float("nan"))})  # fmt: skip
    cam_rows = [{"evaluation": "offline", **scalar_items(offline.metrics.get("camera", {}))}]
    ts_live_rows = []
    if live is not None:
        cam_rows.append({"evaluation": "live (DDS)", **scalar_items(live.metrics.get("camera", {}))})
        for mode, ev in (("offline", offline), ("live (DDS)", live)):
            m = ev.metrics.get("timeseries", {}).get(det, {})
            ts_live_rows.append({"evaluation": mode, "detector": det, **scalar_items(m)})
    latency_rows = [{"evaluation": "offline", **r} for r in offline.latency]
    if live is not None:
        latency_rows += [{"evaluation": "live (DDS)", **r} for r in live.latency]

    cfg = truth.get("config", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>flow_anomaly_ros demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>flow_anomaly_ros demo: anomalies in camera, IMU and CAN streams</h1>",
        f"<p>Bag <code>{html.escape(str(bag))}</code>, {truth['end_s'] - truth['start_s']:.1f} s; "
        f"detector <b>{html.escape(det)}</b> (RealNVP normalizing flow) on IMU+CAN windows, DeepLabV3 "
        f"{html.escape(str(cfg.get('seg_backbone', '')))} with an anomaly class on the camera. "
        + (
            f"Live run: the nodes ran as separate processes and the bag was replayed over DDS at "
            f"{cfg.get('replay_rate', 1.0)}× speed; their outputs were recorded and scored against the ground truth."
            if live is not None
            else "Offline evaluation only (no live run)."
        )
        + "</p>",
        _headline(offline, live, det),
        "<h2>What is real and what is not</h2>",
        "<p class='note'>Only the IMU and GPS signals are <span class='real'>real</span> (KITTI raw drive, via the "
        "gtsam package; CC BY-NC-SA 3.0, Geiger et al. 2013). CAN traffic and camera images are "
        "<span class='gen'>generated</span> (a real opendbc DBC driven by the KITTI motion; procedural street "
        "scenes). <b>Every anomaly is injected or generated</b> by seeded code, which is what makes exact ground "
        "truth possible. No package reachable here ships real labelled CAN attacks or driving images.</p>",
        table(_provenance_rows(truth)),
        "<h2>Time series: signals, scores, detections and ground truth</h2>",
        "<img src='timeseries.png' alt='time series'>",
        "<p class='note'>Shaded: injected intervals (red IMU faults, orange CAN attacks, purple GPS jumps; GPS is "
        "recorded and labelled, but no node scores GPS). Red dots: windows the detector flagged.</p>",
        "<h2>Detector comparison (offline, identical windows)</h2>",
        table(det_rows),
    ]
    if plotted:
        parts.append("<img src='detectors.png' alt='detector comparison'>")
    if per_kind:
        parts += ["<h3>Per fault type</h3>", table(per_kind)]
    if ts_live_rows:
        parts += [f"<h3>{html.escape(det)}: offline vs live</h3>", table(ts_live_rows)]
    parts += [
        "<h2>Camera: anomaly segmentation</h2>",
        _camera_model_note(offline.counts.get("camera_model")),
        table(cam_rows),
        "<img src='camera_scores.png' alt='camera per-frame'>",
    ]
    if frame_rows:
        parts += ["<h3>Selected frames</h3>", "<img src='camera_frames.png' alt='camera frames'>", table(frame_rows)]
    parts += ["<h2>Latency</h2>", table(latency_rows, ["evaluation", "stage", "p50_ms", "p99_ms", "count", "note"])]
    if agreement:
        parts += [
            "<h2>Offline vs live agreement</h2>",
            "<p class='note'>Same cores, same inputs: differences can only come from messages the nodes dropped "
            "(camera: newest-frame policy while busy; time series: bounded queue) or lost in transport; the counts "
            "below show whether any were.</p>",
            table([agreement]),
        ]
    counts = {"offline": offline.counts, **({"live": live.counts} if live is not None else {})}
    parts += ["<h2>Counts</h2>", f"<pre>{html.escape(json.dumps(counts, indent=1, default=str))}</pre>"]
    if timings:
        parts += ["<h2>Run time</h2>", table(timings)]
    if extra_notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in extra_notes] + ["</ul>"]
    parts += [
        "<h2>Reproduce</h2>",
        f"<pre>flow-anomaly evaluate {html.escape(str(bag))}{html.escape(reproduce)}          # offline, no DDS\n"
        f"flow-anomaly evaluate {html.escape(str(bag))}{html.escape(reproduce)} --live   # nodes + DDS replay</pre>",
        "</body></html>",
    ]
    index = out_dir / "index.html"
    index.write_text("\n".join(parts))
    (out_dir / "metrics.json").write_text(
        json.dumps(
            {
                "offline": offline.metrics,
                "live": live.metrics if live is not None else None,
                "agreement": agreement,
                "latency": {"offline": offline.latency, "live": live.latency if live is not None else None},
                "timings": timings,
            },
            indent=1,
            default=json_default,
        )
    )
    return index


def json_default(o: Any) -> Any:
    """``json.dumps(default=)`` for numpy scalars and arrays (anything else as its str)."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
