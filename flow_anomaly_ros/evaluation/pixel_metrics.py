"""Pixel-level metrics of dense anomaly segmentation and of the closed-set segmentation.

What every road-anomaly benchmark reports (Fishyscapes, SegmentMeIfYouCan, Road Anomaly; see
``shared/notes/prior-art.md``): average precision of the anomaly class (AP), false-positive rate at 95 % true-positive
rate (FPR95) and AUROC, computed over all pixels of a data set with the void/ignore label left out; plus the inlier
mIoU that shows the closed-set task did not degrade. The computations are exact (sort-based, ties handled as
scikit-learn does) and match ``sklearn.metrics`` (tested). :class:`AnomalyPixelAccumulator` and
:class:`ConfusionMatrix` collect image by image; the accumulator can subsample a fixed number of pixels per image
(seeded) to bound memory on full-resolution data sets.

Example::

    acc = AnomalyPixelAccumulator()
    acc.update(scores, ood_mask)  # ood: 0 inlier, 1 anomaly, 255 ignore
    acc.compute()  # {"ap": ..., "fpr95": ..., "auroc": ..., "pixels": ..., "anomaly_pixels": ...}
"""

from __future__ import annotations

import numpy as np

IGNORE = 255


def _roc_pr_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cumulative TP and FP counts at every distinct threshold (descending)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.flatnonzero(np.diff(s)) if s.size > 1 else np.array([], np.int64)
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[idx]
    fps = (idx + 1) - tps
    return tps, fps, int(y.sum()), int(y.size - y.sum())


def anomaly_metrics(scores: np.ndarray, ood: np.ndarray, ignore_index: int = IGNORE) -> dict[str, float]:
    """AP, FPR at 95 % TPR and AUROC of per-pixel ``scores`` (higher = anomalous) against ``ood`` (0/1/ignore)."""
    scores = np.asarray(scores, np.float64).ravel()
    ood = np.asarray(ood).ravel()
    if scores.shape != ood.shape:
        raise ValueError(f"scores and labels differ in size: {scores.size} vs {ood.size}")
    valid = ood != ignore_index
    labels = ood[valid]
    if np.any((labels != 0) & (labels != 1)):
        raise ValueError(f"anomaly labels must be 0, 1 or {ignore_index}; got {np.unique(labels)[:10]}")
    s = scores[valid]
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    tps, fps, pos, neg = _roc_pr_points(s, labels.astype(np.int64))
    if pos == 0 or neg == 0:
        raise ValueError(f"need both anomaly and inlier pixels (got {pos} anomaly, {neg} inlier)")
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    precision = tps / (tps + fps)
    recall = tps / pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    auroc = float(np.trapezoid(tpr, fpr))
    fpr95 = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    return {"ap": ap, "fpr95": fpr95, "auroc": auroc, "pixels": int(pos + neg), "anomaly_pixels": int(pos)}


class AnomalyPixelAccumulator:
    """Collects (score, label) pixels over many images; ``max_pixels_per_image`` subsamples them (seeded)."""

    def __init__(self, ignore_index: int = IGNORE, max_pixels_per_image: int | None = None, seed: int = 0) -> None:
        self.ignore_index, self.max_pixels = ignore_index, max_pixels_per_image
        self._rng = np.random.default_rng(seed)
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, scores: np.ndarray, ood: np.ndarray) -> None:
        scores = np.asarray(scores, np.float32)
        ood = np.asarray(ood)
        if scores.shape != ood.shape:
            raise ValueError(f"score map {scores.shape} and label {ood.shape} differ in shape")
        keep = ood.ravel() != self.ignore_index
        s, y = scores.ravel()[keep], ood.ravel()[keep].astype(np.uint8)
        if self.max_pixels is not None and s.size > self.max_pixels:
            pick = self._rng.choice(s.size, self.max_pixels, replace=False)
            s, y = s[pick], y[pick]
        self._scores.append(s)
        self._labels.append(y)

    def threshold_at_tpr(self, tpr: float = 0.95) -> float:
        """Largest threshold whose true-positive rate (``score >= threshold``) is at least ``tpr``."""
        if not 0.0 < tpr <= 1.0:
            raise ValueError(f"tpr must be in (0, 1], got {tpr}")
        pos = np.concatenate([s[y == 1] for s, y in zip(self._scores, self._labels)]) if self._scores else []
        if len(pos) == 0:
            raise ValueError("no anomaly pixels were added")
        return float(np.quantile(pos, 1.0 - tpr, method="lower"))

    def compute(self) -> dict[str, float]:
        if not self._scores:
            raise ValueError("no images were added")
        return anomaly_metrics(np.concatenate(self._scores), np.concatenate(self._labels), self.ignore_index)


class ConfusionMatrix:
    """Pixel confusion of ``num_classes`` target classes; a prediction outside them (e.g. the anomaly class on an
    inlier pixel) counts as a false negative of the target class. ``iou()`` per class, ``miou()`` over present ones.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE) -> None:
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        # rows: target class; columns: predicted class, last column = "any other prediction"
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
        if pred.shape != target.shape:
            raise ValueError(f"prediction and target differ in size: {pred.size} vs {target.size}")
        keep = (target != self.ignore_index) & (target < self.num_classes)
        p = np.minimum(pred[keep].astype(np.int64), self.num_classes)
        t = target[keep].astype(np.int64)
        k = self.num_classes + 1
        self.matrix += np.bincount(t * k + p, minlength=self.num_classes * k).reshape(self.num_classes, k)

    def iou(self) -> np.ndarray:
        """IoU per class (NaN for classes absent from both targets and predictions)."""
        tp = np.diag(self.matrix[:, : self.num_classes]).astype(np.float64)
        denom = self.matrix.sum(1) + self.matrix[:, : self.num_classes].sum(0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur in the targets."""
        present = self.matrix.sum(1) > 0
        if not present.any():
            raise ValueError("no labelled pixels were added")
        return float(np.mean(self.iou()[present]))
