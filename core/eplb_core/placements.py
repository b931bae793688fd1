"""Placements both sides agree on: the start-up placement, and the one validity check
(shapes, expert ids, a replica for every expert).

Used by the sidecar before it changes anything and by the operator's placement engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from eplb_core.arrays import IntArray, to_numpy

if TYPE_CHECKING:
    import torch


def placement_error(
    phy2log: npt.ArrayLike | torch.Tensor,
    num_slots: int,
    num_experts: int,
    layer_ids: list[int] | None = None,
) -> str | None:
    """Why ``phy2log`` ``[L, P]`` is not a usable placement, or None when it is.

    Usable: integer ids, ``P == num_slots`` per layer, ids in ``[0, E)``, every logical expert
    with at least one replica in every layer.  ``layer_ids`` ``[L]`` names the rows in the
    message (default: row index).
    """
    rows = to_numpy(phy2log)
    if rows.ndim != 2:
        return f"placement must be [layers, slots], got shape {list(rows.shape)}"
    if rows.dtype.kind not in "iu":
        return f"placement must hold integer expert ids, got {_dtype_name(phy2log, rows)}"
    if rows.shape[1] != num_slots:
        return f"placement has {rows.shape[1]} slots per layer, expected {num_slots}"
    if rows.size == 0:
        return None
    low, high = int(rows.min()), int(rows.max())
    if low < 0 or high >= num_experts:
        bad = low if low < 0 else high
        return f"placement names expert {bad}, outside [0, {num_experts})"
    cells = np.arange(rows.shape[0])[:, None] * num_experts + rows.astype(np.int64)
    counts = np.bincount(cells.ravel(), minlength=rows.shape[0] * num_experts)
    missing = np.argwhere(counts.reshape(rows.shape[0], num_experts) == 0)
    if missing.size:
        row, expert = (int(v) for v in missing[0])
        layer = layer_ids[row] if layer_ids is not None else row
        return (
            f"layer {layer}: logical expert {expert} has no replica "
            f"({missing.shape[0]} expert(s) without a replica in all)"
        )
    return None


def start_up_placement(num_layers: int, num_slots: int, num_experts: int) -> IntArray:
    """``[L, P]`` int64: slot p holds expert ``p mod E`` (what engines load before any EPLB)."""
    row = np.arange(num_slots, dtype=np.int64) % num_experts
    return np.tile(row, (num_layers, 1))


def _dtype_name(given: object, rows: npt.NDArray[np.generic]) -> str:
    """The dtype as the caller knows it (``torch.float32`` for a tensor)."""
    dtype = getattr(given, "dtype", None)
    return str(dtype) if dtype is not None else str(rows.dtype)
