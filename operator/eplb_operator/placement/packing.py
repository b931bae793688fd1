"""Balanced packing: ``n`` weighted items into ``m`` bins of exactly ``n / m`` items each.

Used twice by the placement policy: expert groups onto nodes, and expert replicas onto the
ranks of a node.  The objective is the heaviest bin.

Two stages per problem (a layer, or a layer's node), compiled with numba because they are
tight scalar loops over a few hundred items:

1. Balanced largest differencing (Karmarkar–Karp for equal-size bins).  Items sorted by
   weight are cut into ``k = n/m`` runs of ``m``; each run is a partial solution with one
   item per bin.  The two partial solutions with the largest spread (heaviest − lightest
   bin) are merged, the heaviest bins of one joining the lightest of the other, until one
   remains.  It lands far closer to the optimum than the greedy "lightest non-full bin"
   rule (LPT) of DeepSeek's eplb.py and vLLM.
2. Swap refinement: while exchanging an item of the heaviest bin with an item of another
   bin lowers the heavier of the two, make the best such exchange (partners scanned from the
   lightest up, stopping when no heavier partner can do better).  Each accepted swap
   strictly lowers the heaviest bin or the number of bins at that load, so it terminates.

Example: weights ``[8, 7, 6, 5, 4, 2]`` into 2 bins of 3 → ``{8, 6, 2}`` and ``{7, 5, 4}``,
both 16 (LPT gives 17 / 15).

Every sort is stable and every tie goes to the lower index, so equal input gives equal
output on any machine.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Refinement stops after this many swaps per problem (real loads need a few dozen at most).
MAX_REFINEMENT_SWAPS = 512
# A problem is done once its heaviest bin is within this fraction of the trivial bound
# max(mean bin, heaviest item): below 0.02%, swaps cost more time than they buy balance.
REFINEMENT_TOLERANCE = 2e-4


def pack(weights: FloatArray, num_bins: int) -> IntArray:
    """Bin of each item, ``[B, n]`` int64, for item weights ``[B, n]``; ``n % num_bins == 0``.

    Every bin gets exactly ``n / num_bins`` items.
    """
    batch, num_items = weights.shape
    if num_bins < 1 or num_items % num_bins:
        raise ValueError(f"{num_items} items do not split evenly into {num_bins} bins")
    bins = np.empty((batch, num_items), dtype=np.int64)
    _pack_batch(np.ascontiguousarray(weights, dtype=np.float64), num_bins, bins)
    return bins


def warm_up() -> None:
    """Load the compiled kernels now (numba does it on first call, from its on-disk cache).

    Call before timing a placement, so the one-off load is not counted as computation.
    """
    from eplb_operator.placement.count_search import search_counts
    from eplb_operator.placement.replication import replicate

    weights = np.array([[3.0, 2.0, 2.0, 1.0]])
    search_counts(weights, replicate(weights, 6), 2)


def members(bins: IntArray, num_bins: int) -> IntArray:
    """``[B, m, n/m]``: the items of each bin, ascending, from the bin of each item ``[B, n]``."""
    batch, num_items = bins.shape
    # Keys are unique, so any sort algorithm gives the same order.
    order = np.argsort(bins * num_items + np.arange(num_items), axis=1)
    return order.reshape(batch, num_bins, num_items // num_bins)


@numba.njit(cache=True)
def _pack_batch(weights: FloatArray, num_bins: int, bins: IntArray) -> None:
    num_items = weights.shape[1]
    per_bin = num_items // num_bins
    # Work buffers shared by every problem of the batch: allocation dominates otherwise.
    items = np.empty((per_bin, num_bins, per_bin), dtype=np.int64)
    filled = np.empty((per_bin, num_bins), dtype=np.int64)
    loads = np.empty((per_bin, num_bins), dtype=np.float64)
    light_first = np.empty(num_bins, dtype=np.int64)
    heavy_first = np.empty(num_bins, dtype=np.int64)
    alive = np.empty(per_bin, dtype=np.bool_)
    for row in range(weights.shape[0]):
        if num_bins == 1:
            bins[row, :] = 0
            continue
        w = weights[row]
        content = _largest_differencing(
            w, num_bins, items, filled, loads, light_first, heavy_first, alive
        )
        _refine_by_swaps(w, content, num_bins, per_bin)
        for b in range(num_bins):
            for s in range(per_bin):
                bins[row, content[b, s]] = b


@numba.njit(cache=True)
def _sort_bins(loads: FloatArray, row: int, order: IntArray, descending: bool) -> None:
    """Stable insertion sort of bin indices by ``loads[row]`` into ``order`` (bins are few).

    Indexes ``loads`` directly: array views inside hot numba loops cost reference counting.
    """
    sign = -1.0 if descending else 1.0
    for i in range(order.shape[0]):
        order[i] = i
    for i in range(1, order.shape[0]):
        current = order[i]
        key = sign * loads[row, current]
        j = i - 1
        while j >= 0 and sign * loads[row, order[j]] > key:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = current


@numba.njit(cache=True)
def _largest_differencing(
    weights: FloatArray,
    num_bins: int,
    items: IntArray,
    filled: IntArray,
    loads: FloatArray,
    light_first: IntArray,
    heavy_first: IntArray,
    alive: npt.NDArray[np.bool_],
) -> IntArray:
    """Partial solution t, bin b holds ``items[t, b, :filled[t, b]]`` weighing ``loads[t, b]``.

    Returns the surviving solution's ``[m, n/m]`` items (a view into ``items``).
    """
    num_tuples = items.shape[0]
    # numba's own quicksort: the same order on every machine (ties by a fixed rule).
    by_weight = np.argsort(-weights)
    for t in range(num_tuples):
        for b in range(num_bins):
            item = by_weight[t * num_bins + b]
            items[t, b, 0] = item
            filled[t, b] = 1
            loads[t, b] = weights[item]
    alive[:] = True
    for _ in range(num_tuples - 1):
        keep, merged = -1, -1
        keep_spread, merged_spread = -1.0, -1.0
        for t in range(num_tuples):
            if not alive[t]:
                continue
            heaviest, lightest = loads[t, 0], loads[t, 0]
            for b in range(1, num_bins):
                heaviest = max(heaviest, loads[t, b])
                lightest = min(lightest, loads[t, b])
            spread = heaviest - lightest
            if spread > keep_spread:
                merged, merged_spread = keep, keep_spread
                keep, keep_spread = t, spread
            elif spread > merged_spread:
                merged, merged_spread = t, spread
        _sort_bins(loads, keep, light_first, False)
        _sort_bins(loads, merged, heavy_first, True)
        for q in range(num_bins):
            dst, src = light_first[q], heavy_first[q]
            for s in range(filled[merged, src]):
                items[keep, dst, filled[keep, dst] + s] = items[merged, src, s]
            filled[keep, dst] += filled[merged, src]
            loads[keep, dst] += loads[merged, src]
        alive[merged] = False
    survivor = 0
    while not alive[survivor]:
        survivor += 1
    result: IntArray = items[survivor]
    return result


@numba.njit(cache=True)
def _refine_by_swaps(weights: FloatArray, content: IntArray, num_bins: int, per_bin: int) -> None:
    loads = np.zeros(num_bins, dtype=np.float64)
    for b in range(num_bins):
        for s in range(per_bin):
            loads[b] += weights[content[b, s]]
    good_enough = max(weights.sum() / num_bins, weights.max()) * (1.0 + REFINEMENT_TOLERANCE)
    for _ in range(MAX_REFINEMENT_SWAPS):
        heavy = 0
        for b in range(1, num_bins):
            if loads[b] > loads[heavy]:
                heavy = b
        heavy_load = loads[heavy]
        if heavy_load <= good_enough:
            return
        best_value = heavy_load * (1.0 - 1e-12)
        best_i, best_bin, best_j = -1, -1, -1
        # Lightest partners first: a swap with bin b leaves the pair at no less than
        # (heavy + load_b) / 2, so once the best found beats that, heavier bins cannot help.
        for b in np.argsort(loads):
            if b == heavy:
                continue
            if best_value <= 0.5 * (heavy_load + loads[b]):
                break
            for i in range(per_bin):
                heavy_item = weights[content[heavy, i]]
                for j in range(per_bin):
                    transfer = heavy_item - weights[content[b, j]]
                    if transfer <= 0.0:
                        continue
                    worse = max(heavy_load - transfer, loads[b] + transfer)
                    if worse < best_value:
                        best_value, best_i, best_bin, best_j = worse, i, b, j
        if best_i < 0:
            return
        transfer = weights[content[heavy, best_i]] - weights[content[best_bin, best_j]]
        loads[heavy] -= transfer
        loads[best_bin] += transfer
        swapped = content[heavy, best_i]
        content[heavy, best_i] = content[best_bin, best_j]
        content[best_bin, best_j] = swapped
