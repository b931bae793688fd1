"""Load per rank × layer, before and after a placement, as one PNG.

Each cell is a rank's load divided by the layer's mean rank load, so 1.0 (white) is
perfect balance, red is overloaded, blue underloaded; a line plot beside it shows each
layer's imbalance (max / mean) before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

from eplb_core.arrays import to_numpy

if TYPE_CHECKING:
    from eplb_core.arrays import Array


def plot_rank_loads(before: Array, after: Array, title: str, path: Path) -> None:
    """Write the PNG for rank loads ``before`` and ``after`` (both ``[L, R]``, numpy or torch)
    to ``path``."""
    relative = [_relative(before), _relative(after)]
    peak = max(float(r.max()) for r in relative)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(peak, 1.01))
    figure, axes = plt.subplots(
        1, 3, figsize=(14, 5), gridspec_kw={"width_ratios": [4, 4, 2]}, constrained_layout=True
    )
    for axis, data, label in zip(axes[:2], relative, ("before", "after"), strict=True):
        image = axis.imshow(data, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        axis.set_title(f"{label}: max/mean {data.max(axis=1).mean():.3f} (mean over layers)")
        axis.set_xlabel("rank")
        if data.shape[1] <= 32:  # one tick per rank, not matplotlib's half steps
            axis.set_xticks(range(data.shape[1]))
        axis.set_ylabel("MoE layer")
    figure.colorbar(image, ax=axes[:2], shrink=0.8, label="rank load / mean rank load")
    layers = np.arange(relative[0].shape[0])
    axes[2].plot(relative[0].max(axis=1), layers, label="before", color="tab:red")
    axes[2].plot(relative[1].max(axis=1), layers, label="after", color="tab:blue")
    axes[2].axvline(1.0, color="grey", linewidth=0.8)
    axes[2].invert_yaxis()
    axes[2].set_xlabel("imbalance (max / mean)")
    axes[2].set_title("per layer")
    axes[2].legend(loc="best")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _relative(loads: Array) -> np.ndarray:
    values = np.asarray(to_numpy(loads), dtype=np.float64)
    mean = values.mean(axis=1, keepdims=True)
    relative: np.ndarray = np.divide(values, mean, out=np.ones_like(values), where=mean > 0)
    return relative
