"""Isolation Forest baseline: fitted by scikit-learn, stored as flat tree arrays, scored in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors.base import Detector, register_detector


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n) of Liu et al. (2008): mean path length of an unsuccessful BST search among n points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@register_detector
class IsolationForestDetector(Detector):
    """Isolation Forest (Liu et al. 2008) via scikit-learn; stored as flat tree arrays, scored in numpy.

    Score = ``2 ** (-E[h(x)] / c(max_samples))`` (scikit-learn's ``-score_samples``), higher = more anomalous.
    """

    name = "iforest"
    DEFAULTS: ClassVar[dict[str, Any]] = {"n_estimators": 100, "contamination": 0.05, "max_samples": "auto", "seed": 0}

    def _fit(self, x: np.ndarray, progress: bool) -> None:
        from sklearn.ensemble import IsolationForest

        est = IsolationForest(
            n_estimators=int(self.params["n_estimators"]),
            contamination=float(self.params["contamination"]),
            max_samples=self.params["max_samples"],
            random_state=int(self.params["seed"]),
        ).fit(x)
        lefts, rights, feats, thrs, values, roots = [], [], [], [], [], []
        offset = 0
        for tree, features in zip(est.estimators_, est.estimators_features_):
            t = tree.tree_
            n = t.node_count
            left = t.children_left.astype(np.int64)
            right = t.children_right.astype(np.int64)
            depth = np.zeros(n)
            for i in range(n):  # parents precede children in scikit-learn's node order
                if left[i] >= 0:
                    depth[left[i]] = depth[right[i]] = depth[i] + 1
            leaf = left < 0
            lefts.append(np.where(leaf, np.arange(n), left) + offset)
            rights.append(np.where(leaf, np.arange(n), right) + offset)
            feats.append(np.where(leaf, 0, np.asarray(features)[np.maximum(t.feature, 0)]))
            thrs.append(t.threshold)
            values.append(np.where(leaf, depth + _average_path_length(t.n_node_samples), 0.0))
            roots.append(offset)
            offset += n
        self.left, self.right = np.concatenate(lefts), np.concatenate(rights)
        self.feature, self.threshold = np.concatenate(feats), np.concatenate(thrs)
        self.leaf_value, self.roots = np.concatenate(values), np.array(roots)
        self.denominator = float(len(roots) * _average_path_length(np.array([est.max_samples_]))[0])

    def _score(self, x: np.ndarray) -> np.ndarray:
        x32 = x.astype(np.float32).astype(np.float64)  # scikit-learn's trees compare float32 inputs
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        while True:
            nxt = np.where(x32[rows, self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
            if np.array_equal(nxt, node):
                break
            node = nxt
        depth = self.leaf_value[node].sum(axis=1)
        return 2.0 ** (-depth / self.denominator)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            "left": self.left,
            "right": self.right,
            "feature": self.feature,
            "threshold": self.threshold,
            "leaf_value": self.leaf_value,
            "roots": self.roots,
        }

    def _state(self) -> dict[str, Any]:
        return {"denominator": self.denominator}

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        for k in ("left", "right", "feature", "roots"):
            setattr(self, k, np.asarray(tensors[k], dtype=np.int64))
        self.threshold = np.asarray(tensors["threshold"], np.float64)
        self.leaf_value = np.asarray(tensors["leaf_value"], np.float64)
        self.denominator = float(state["denominator"])
        n = len(self.left)
        if not (len(self.right) == len(self.feature) == len(self.threshold) == n) or (
            n and (self.left.max() >= n or self.right.max() >= n or self.feature.max() >= self.n_features_)
        ):
            raise ModelFileError(f"Isolation Forest arrays in {path} are inconsistent")
