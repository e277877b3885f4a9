"""PNG figures like the paper's Figures 9 and 10 (Hu & Kathula 2024, §5).

- :func:`figure_patches`: a grid of patches sampled from the untrained MAF next to a grid from the trained MAF (and
  optionally the low-likelihood samples used as negatives and real inlier patches for reference), Figure 9.
- :func:`figure_pasting`: inlier images before and after pasting, with the anomaly label outlined, Figure 10.

Matplotlib runs with the Agg backend (no display needed); files are written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flow_anomaly_ros.model_store import atomic_write_bytes


def patch_grid(patches: np.ndarray, cols: int = 8, upscale: int = 4, gap: int = 1) -> np.ndarray:
    """Tile uint8 ``(n, p, p, 3)`` patches into one image (nearest upscaling, white gaps)."""
    if patches.ndim != 4 or len(patches) == 0:
        raise ValueError(f"expected a non-empty (n, p, p, 3) array, got {patches.shape}")
    n, p = len(patches), patches.shape[1] * upscale
    rows = int(np.ceil(n / cols))
    big = patches.repeat(upscale, axis=1).repeat(upscale, axis=2)
    grid = np.full((rows * (p + gap) + gap, cols * (p + gap) + gap, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (p + gap), gap + c * (p + gap)
        grid[y : y + p, x : x + p] = big[i]
    return grid


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def figure_patches(panels: Sequence[tuple[str, np.ndarray]], path: str | Path, cols: int = 8) -> Path:
    """One row of titled patch grids (e.g. untrained MAF, trained MAF, low-likelihood negatives, inliers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (title, patches) in zip(axes, panels):
        ax.imshow(patch_grid(patches, cols=cols))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("Patches sampled from the MAF (cf. Hu & Kathula 2024, Fig. 9)", fontsize=10)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def figure_pasting(
    before: Sequence[np.ndarray], after: Sequence[np.ndarray], masks: Sequence[np.ndarray], path: str | Path
) -> Path:
    """Rows of (before, after with the pasted region outlined), cf. the paper's Figure 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(before)
    if not (n == len(after) == len(masks)) or n == 0:
        raise ValueError("before, after and masks must be non-empty and of the same length")
    aspect = before[0].shape[0] / before[0].shape[1]
    fig, axes = plt.subplots(n, 2, figsize=(8, 4 * aspect * n + 0.6), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(before[i])
        axes[i, 1].imshow(after[i])
        if masks[i].any():
            axes[i, 1].contour(masks[i].astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
        for ax in axes[i]:
            ax.axis("off")
    axes[0, 0].set_title("inlier image", fontsize=9)
    axes[0, 1].set_title("after pasting MAF patches (anomaly label outlined)", fontsize=9)
    fig.suptitle("Images before and after pasting (cf. Hu & Kathula 2024, Fig. 10)", fontsize=10)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
