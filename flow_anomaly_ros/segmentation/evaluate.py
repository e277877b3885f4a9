"""Evaluate a segmentation backend: inlier mIoU and anomaly AP / FPR95 / AUROC for every score method.

The same logits are scored by every method (the paper's anomaly-class probability and the max-softmax, max-logit,
energy and DenseHybrid baselines), so the table compares them on identical predictions. Overlays show image,
predicted classes (Cityscapes colours, anomaly magenta), the anomaly score as a heat map and the ground truth.
``--calibrate`` stores, per method, the threshold that keeps 95 % of the anomaly pixels (TPR 95 %) in the model's
manifest, which the camera node then uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flow_anomaly_ros.evaluation.pixel_metrics import AnomalyPixelAccumulator, ConfusionMatrix
from flow_anomaly_ros.model_store import MANIFEST_FILE, atomic_write_bytes, atomic_write_json, read_manifest
from flow_anomaly_ros.runtime.preprocess import resize_map
from flow_anomaly_ros.segmentation.classes import CITYSCAPES_CLASSES, colorize
from flow_anomaly_ros.segmentation.scores import score_map
from flow_anomaly_ros.segmentation.spec import MODEL_KIND

MAX_PIXELS_PER_IMAGE = 250_000  # bounds memory on full-resolution data sets (seeded subsample)


def heatmap(scores: np.ndarray) -> np.ndarray:
    """Scores → RGB uint8 with matplotlib's inferno, scaled to the map's 1st..99th percentile."""
    from matplotlib import colormaps

    lo, hi = np.percentile(scores, [1, 99])
    t = np.clip((scores - lo) / max(hi - lo, 1e-12), 0, 1)
    return (colormaps["inferno"](t)[..., :3] * 255).astype(np.uint8)


def overlay_png(image: np.ndarray, classes: np.ndarray, scores: np.ndarray, truth: np.ndarray | None) -> bytes:
    import io

    from PIL import Image

    panels = [image, colorize(classes), heatmap(scores)]
    if truth is not None:
        panels.append(colorize(truth))
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(panels, axis=1)).save(buf, format="PNG")
    return buf.getvalue()


def evaluate_backend(
    backend: Any,
    samples: Iterable[tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str]],
    methods: Sequence[str],
    overlays: int = 4,
) -> dict[str, Any]:
    """Run ``backend`` over ``(image, label, ood, name)`` samples; returns metrics, table and overlay PNGs."""
    spec = backend.spec
    confusion = ConfusionMatrix(spec.num_inlier_classes)
    accs = {m: AnomalyPixelAccumulator(max_pixels_per_image=MAX_PIXELS_PER_IMAGE, seed=0) for m in methods}
    pngs: dict[str, bytes] = {}
    n_images, n_ood = 0, 0
    for image, label, ood, name in samples:
        logits = backend.infer(image)
        classes = logits.argmax(1)[0].astype(np.uint8)
        if classes.shape != image.shape[:2]:
            classes = resize_map(classes[None], image.shape[:2], nearest=True)[0]
        if label is not None:
            confusion.update(classes, label)
        maps = {}
        for m in methods:
            s = np.asarray(score_map(logits, m), np.float32)
            if s.shape[1:] != image.shape[:2]:
                s = resize_map(s, image.shape[:2], nearest=False)
            maps[m] = s[0]
            if ood is not None and (ood == 1).any() and (ood == 0).any():
                accs[m].update(s[0], ood)
        if ood is not None and (ood == 1).any():
            n_ood += 1
        if len(pngs) < overlays:
            truth = label if label is not None else (None if ood is None else np.where(ood == 1, 19, 0))
            shown = spec.score_method if spec.score_method in maps else methods[0]
            pngs[f"overlay_{name}.png"] = overlay_png(image, classes, maps[shown], truth)
        n_images += 1
    if n_images == 0:
        raise ValueError("no images to evaluate")
    rows, results, thresholds = [], {}, {}
    for m in methods:
        if n_ood:
            r = accs[m].compute()
            thresholds[m] = accs[m].threshold_at_tpr(0.95)
            results[m] = r
            rows.append(f"| {m} | {100 * r['ap']:.2f} | {100 * r['fpr95']:.2f} | {100 * r['auroc']:.2f} |")
    miou = confusion.miou() if confusion.matrix.sum() else None
    iou = confusion.iou() if miou is not None else None
    lines = [f"Backend `{backend.name}`, backbone {spec.backbone}, {n_images} images ({n_ood} with anomalies)."]
    if miou is not None:
        lines.append(f"\nInlier mIoU (arg-max over all 20 classes): **{100 * miou:.2f}**\n")
    if rows:
        lines += ["| score method | AP % | FPR95 % | AUROC % |", "|---|---|---|---|", *rows]
    table = "\n".join(lines) + "\n"
    return {
        "backend": backend.name,
        "backbone": spec.backbone,
        "images": n_images,
        "images_with_anomalies": n_ood,
        "miou": miou,
        "iou_per_class": None if iou is None else dict(zip(CITYSCAPES_CLASSES, map(_nan_to_none, iou))),
        "anomaly": results,
        "thresholds_at_95tpr": thresholds,
        "table": table,
        "overlays": pngs,
    }


def _nan_to_none(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def write_report(out: str | os.PathLike[str], report: dict[str, Any]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in report["overlays"].items():
        atomic_write_bytes(out / name, data)
    atomic_write_bytes(out / "results.md", report["table"].encode())
    atomic_write_json(out / "results.json", {k: v for k, v in report.items() if k not in ("overlays", "table")})


def write_thresholds(model_dir: str | os.PathLike[str], thresholds: dict[str, float], source: str) -> None:
    """Store calibrated thresholds in the model's manifest (weights and their checksum stay untouched)."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, expected_kind=MODEL_KIND)
    manifest["thresholds"] = {**manifest.get("thresholds", {}), **{k: float(v) for k, v in thresholds.items()}}
    manifest["threshold_calibration"] = {"target_tpr": 0.95, "data": source, "methods": sorted(thresholds)}
    atomic_write_json(model_dir / MANIFEST_FILE, manifest)
