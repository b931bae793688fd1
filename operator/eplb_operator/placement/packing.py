"""Balanced packing: ``n`` weighted items into ``m`` bins of exactly ``n / m`` items each.

Used twice by the placement policy: expert groups onto nodes, and expert replicas onto the
ranks of a node.  The objective is the heaviest bin.

Two stages per problem (a layer, or a layer's node), compiled with numba
(``placement.compiled``) because they are tight scalar loops over a few hundred items:

1. Balanced largest differencing (Karmarkar–Karp for equal-size bins).  Items sorted by
   weight are cut into ``k = n/m`` runs of ``m``; each run is a partial solution with one
   item per bin.  The two partial solutions with the largest spread (heaviest − lightest
   bin) are merged, the heaviest bins of one joining the lightest of the other, until one
   remains.  It lands far closer to the optimum than the greedy "lightest non-full bin"
   rule (LPT) of DeepSeek's eplb.py and vLLM.  A merge only records where each bin of the
   absorbed solution went (``k·m`` labels in all, no item copying); each item follows that
   chain to its final bin once, at the end.
2. Swap refinement: while exchanging an item of the heaviest bin with an item of another
   bin lowers the heavier of the two, make the best such exchange.  Partners are scanned
   from the lightest up, stopping when no heavier partner can do better; inside a pair the
   best exchange moves the weight closest to half the load difference, found by one merge
   walk over the two bins' items kept in weight order (``O(n/m)``, not ``O((n/m)²)``).
   Each accepted swap strictly lowers the heaviest bin or the number of bins at that load,
   so it terminates.  It stops early near a lower bound no packing can beat
   (``cardinality_bound``).

Example: weights ``[8, 7, 6, 5, 4, 2]`` into 2 bins of 3 → ``{8, 6, 2}`` and ``{7, 5, 4}``,
both 16 (LPT gives 17 / 15).

Every sort is stable and every tie goes to the lower index, so equal input gives equal
output on any machine.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from eplb_operator.placement import kernels

__all__ = ["members", "pack"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def pack(weights: FloatArray, num_bins: int) -> IntArray:
    """Bin of each item, ``[B, n]`` int64, for item weights ``[B, n]``; ``n % num_bins == 0``.

    Every bin gets exactly ``n / num_bins`` items.
    """
    batch, num_items = weights.shape
    if num_bins < 1 or num_items % num_bins:
        raise ValueError(f"{num_items} items do not split evenly into {num_bins} bins")
    bins = np.empty((batch, num_items), dtype=np.int64)
    kernels.active().pack_batch(np.ascontiguousarray(weights, dtype=np.float64), num_bins, bins)
    return bins


def members(bins: IntArray, num_bins: int) -> IntArray:
    """``[B, m, n/m]``: the items of each bin, ascending, from the bin of each item ``[B, n]``."""
    batch, num_items = bins.shape
    # Keys are unique, so any sort algorithm gives the same order.
    order = np.argsort(bins * num_items + np.arange(num_items), axis=1)
    return order.reshape(batch, num_bins, num_items // num_bins)
