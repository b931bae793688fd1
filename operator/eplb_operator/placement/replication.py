"""How many replicas each logical expert gets."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from eplb_operator.placement import kernels

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def replicate(load: FloatArray, num_slots: int) -> IntArray:
    """Replica counts ``[B, n]`` (each ≥ 1, rows summing to ``num_slots``) for ``load`` ``[B, n]``.

    Minimises the heaviest replica, ``max(load / counts)``: each extra slot goes to the
    expert whose replicas are currently the heaviest.  The greedy is optimal for that
    objective, since a replica's load only falls as its expert gains replicas.  Ties go to
    the lower expert id.  (Compiled, with a heap: ``compiled.replicate_row``.)

    Example: load ``[[90, 30, 20, 10]]`` and 6 slots → counts ``[[3, 1, 1, 1]]`` (replicas of
    30, 30, 30, 30, 20, 10).
    """
    batch, num_items = load.shape
    if num_slots < num_items:
        raise ValueError(f"{num_slots} slots cannot hold {num_items} experts")
    counts = np.empty((batch, num_items), dtype=np.int64)
    kernels.active().replicate_batch(
        np.ascontiguousarray(load, dtype=np.float64), num_slots, counts
    )
    return counts


def expand_replicas(counts: IntArray) -> IntArray:
    """``[B, sum(counts[b])]``: the expert id of each replica, experts in ascending order.

    Every row of ``counts`` ``[B, n]`` must have the same sum.
    """
    batch, num_items = counts.shape
    ids = np.broadcast_to(np.arange(num_items), (batch, num_items)).ravel()
    return np.repeat(ids, counts.ravel()).reshape(batch, -1)
