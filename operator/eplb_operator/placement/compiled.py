"""Every compiled loop of the placement policy, in one file on purpose.

numba keeps compiled code on disk keyed by the source of the file that defines each
function; a compiled function that calls one from another file keeps the old machine code
after that other file changes.  With every kernel (and every constant they read) here, any
edit recompiles them all.  The algorithms are described where they are used:
``packing`` (balanced largest differencing + swap refinement), ``replication`` (min-max
replicas), ``count_search`` (counts chosen with the packing) and ``rebalance`` (the pass
over layers and nodes).

Work buffers are allocated once per batch and passed down as named tuples: allocation
would otherwise cost as much as the arithmetic of a problem of a few dozen items.  Every
sort is stable and every tie goes to the lower index, so equal input gives equal output.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# -- packing ------------------------------------------------------------------------------
# Refinement stops after this many swaps per problem (real loads need a few dozen at most).
MAX_REFINEMENT_SWAPS = 512
# A problem is done once its heaviest bin is within this fraction of the trivial bound
# (mean bin, heaviest item): below 0.02%, swaps cost more time than they buy balance.
REFINEMENT_TOLERANCE = 2e-4
# Sorting experts by insertion rather than numba's argsort up to this many: no allocation.
INSERTION_SORT_LIMIT = 24

# -- count search (constants) -------------------------------------------------------------
# Problems whose packing is this close to the bound of any counts are left alone.
GAP_TO_SEARCH = 5e-3
# A candidate must beat the best packing by more than this to count as better.
IMPROVEMENT = 1e-12
# Local search: rounds of one-replica moves while they improve; each round ranks
# (DONORS + CROWDED_DONORS) × RECEIVERS moves and repacks them a few at a time.
LOCAL_ROUNDS = 32
DONORS = 8
CROWDED_DONORS = 2
RECEIVERS = 8
CANDIDATES_PER_ROUND = 8
# Exhaustive search: before a candidate is packed, a depth-first search over its bins
# settles whether any packing of it could beat the best so far (problems of at most this
# many replicas, at most this many search steps; past either, it is packed anyway).
FEASIBILITY_ITEMS = 24
FEASIBILITY_STEPS = 256


class Workspace(NamedTuple):
    """Scratch of ``pack_sorted`` for ``n`` items in ``m`` bins (``k = n / m`` runs)."""

    order: IntArray  # [n] items, heaviest first (for callers that sort)
    went_to: IntArray  # [k, m] bin of the surviving solution each bin of a run went to
    merged_into: IntArray  # [k] run each run was merged into (-1: not merged)
    run_loads: FloatArray  # [k, m] bin loads of each partial solution
    spread: FloatArray  # [k] heaviest - lightest bin of each partial solution
    light_first: IntArray  # [m] bins by ascending load
    heavy_first: IntArray  # [m] bins by descending load
    filled: IntArray  # [m] items placed per bin


@numba.njit(cache=True, error_model="numpy")
def new_workspace(num_items: int, num_bins: int) -> Workspace:
    runs = num_items // num_bins
    return Workspace(
        np.empty(num_items, dtype=np.int64),
        np.empty((runs, num_bins), dtype=np.int64),
        np.empty(runs, dtype=np.int64),
        np.empty((runs, num_bins), dtype=np.float64),
        np.empty(runs, dtype=np.float64),
        np.empty(num_bins, dtype=np.int64),
        np.empty(num_bins, dtype=np.int64),
        np.empty(num_bins, dtype=np.int64),
    )


@numba.njit(cache=True, error_model="numpy")
def pack_batch(weights: FloatArray, num_bins: int, bins: IntArray) -> None:
    """``bins`` ``[B, n]``: the bin of each item of ``weights`` ``[B, n]``."""
    num_items = weights.shape[1]
    work = new_workspace(num_items, num_bins)
    content = np.empty((num_bins, num_items // num_bins), dtype=np.int64)
    loads = np.empty(num_bins, dtype=np.float64)
    descending = np.empty(num_items, dtype=np.float64)
    for row in range(weights.shape[0]):
        # Stable: equal weights keep index order.
        work.order[:] = np.argsort(-weights[row], kind="mergesort")
        for position in range(num_items):
            descending[position] = weights[row, work.order[position]]
        pack_sorted(descending, num_bins, work, content, loads, 0.0, MAX_REFINEMENT_SWAPS)
        for b in range(num_bins):
            for position in content[b]:
                bins[row, work.order[position]] = b


@numba.njit(cache=True, error_model="numpy")
def pack_sorted(
    weights: FloatArray,
    num_bins: int,
    work: Workspace,
    content: IntArray,
    loads: FloatArray,
    good_enough: float,
    max_swaps: int,
) -> float:
    """Pack ``weights`` ``[n]`` (sorted heaviest first) into ``num_bins`` bins; returns the
    heaviest bin's load.

    Fills ``content`` ``[m, n/m]`` with the items (positions in ``weights``) of each bin,
    in ascending weight, and ``loads`` ``[m]``.  Refinement stops after ``max_swaps``
    swaps, near the problem's lower bound, or once the heaviest bin is at most
    ``good_enough`` (a load some other part of the layer reaches anyway).
    """
    if num_bins == 1:
        for position in range(weights.shape[0]):
            content[0, position] = weights.shape[0] - 1 - position
        loads[0] = weights.sum()
        return float(loads[0])
    _largest_differencing(weights, num_bins, work, content)
    # Done at a provably optimal packing, or within the tolerance of the mean bin and the
    # heaviest item.
    trivial = max(weights.sum() / num_bins, weights[0])
    stop_at = max(
        good_enough,
        cardinality_bound(weights, num_bins),
        trivial * (1.0 + REFINEMENT_TOLERANCE),
    )
    return _refine_by_swaps(weights, content, loads, work.light_first, stop_at, max_swaps)


@numba.njit(cache=True, error_model="numpy")
def _sort_bins(keys: FloatArray, order: IntArray, descending: bool) -> None:
    """Stable insertion sort of bin indices by ``keys`` into ``order`` (bins are few)."""
    sign = -1.0 if descending else 1.0
    for i in range(order.shape[0]):
        order[i] = i
    for i in range(1, order.shape[0]):
        current = order[i]
        key = sign * keys[current]
        j = i - 1
        while j >= 0 and sign * keys[order[j]] > key:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = current


@numba.njit(cache=True, error_model="numpy")
def _largest_differencing(
    weights: FloatArray, num_bins: int, work: Workspace, content: IntArray
) -> None:
    """Fill ``content`` ``[m, n/m]`` with the surviving partial solution's bins, each in
    ascending weight (``weights`` ``[n]`` are sorted heaviest first)."""
    went_to, merged_into, run_loads = work.went_to, work.merged_into, work.run_loads
    spread, light_first, heavy_first, filled = (
        work.spread,
        work.light_first,
        work.heavy_first,
        work.filled,
    )
    num_runs = weights.shape[0] // num_bins
    for t in range(num_runs):
        for b in range(num_bins):
            run_loads[t, b] = weights[t * num_bins + b]
        spread[t] = run_loads[t, 0] - run_loads[t, num_bins - 1]
        merged_into[t] = -1
    for _ in range(num_runs - 1):
        keep, merged = -1, -1
        keep_spread, merged_spread = -1.0, -1.0
        for t in range(num_runs):
            if merged_into[t] >= 0:
                continue
            if spread[t] > keep_spread:
                merged, merged_spread = keep, keep_spread
                keep, keep_spread = t, spread[t]
            elif spread[t] > merged_spread:
                merged, merged_spread = t, spread[t]
        _sort_bins(run_loads[keep], light_first, False)
        _sort_bins(run_loads[merged], heavy_first, True)
        for q in range(num_bins):
            went_to[merged, heavy_first[q]] = light_first[q]
            run_loads[keep, light_first[q]] += run_loads[merged, heavy_first[q]]
        merged_into[merged] = keep
        heaviest, lightest = run_loads[keep, 0], run_loads[keep, 0]
        for b in range(1, num_bins):
            heaviest = max(heaviest, run_loads[keep, b])
            lightest = min(lightest, run_loads[keep, b])
        spread[keep] = heaviest - lightest
    filled[:] = 0
    # From the lightest item up, so each bin fills in ascending weight.
    for position in range(weights.shape[0] - 1, -1, -1):
        t, b = position // num_bins, position % num_bins
        while merged_into[t] >= 0:
            b = went_to[t, b]
            t = merged_into[t]
        content[b, filled[b]] = position
        filled[b] += 1


@numba.njit(cache=True, error_model="numpy")
def cardinality_bound(weights: FloatArray, num_bins: int) -> float:
    """No packing of ``weights`` ``[n]`` (sorted heaviest first) into ``num_bins`` bins of
    ``n/m`` items has a lighter heaviest bin than this.

    Max of: the mean bin; and, for ``j = 0 … n/m − 1``, a bin holding ``j + 1`` of the
    ``j·m + 1`` heaviest items (pigeonhole) — at least the lightest ``j + 1`` of them — plus
    the ``n/m − j − 1`` lightest items of all.
    """
    num_items = weights.shape[0]
    per_bin = num_items // num_bins
    bound = weights.sum() / num_bins
    for j in range(per_bin):
        top = j * num_bins  # position of the (j·m + 1)-th heaviest item
        value = 0.0
        for i in range(top - j, top + 1):
            value += weights[i]
        for i in range(num_items - (per_bin - j - 1), num_items):
            value += weights[i]
        bound = max(bound, value)
    return float(bound)


@numba.njit(cache=True, error_model="numpy")
def lightest_bin_ceiling(weights: FloatArray, num_bins: int) -> float:
    """Every packing of ``weights`` ``[n]`` (sorted heaviest first) into ``num_bins`` bins
    of ``n/m`` items has a bin no heavier than this (``cardinality_bound`` mirrored).

    Min over ``j = 0 … n/m − 1`` of: a bin holds ``j + 1`` of the ``j·m + 1`` lightest
    items (pigeonhole) — at most the heaviest ``j + 1`` of them — plus at most the
    ``n/m − j − 1`` heaviest items of all.  Under ``could_beat``'s window's floor, no
    packing fits the window: a cheap answer to about one candidate in six it rejects on
    Mixtral's shape, before its search.
    """
    num_items = weights.shape[0]
    per_bin = num_items // num_bins
    ceiling = np.inf
    for j in range(per_bin):
        top = num_items - 1 - j * num_bins  # position of the (j·m + 1)-th lightest item
        value = 0.0
        for i in range(top, top + j + 1):
            value += weights[i]
        for i in range(per_bin - j - 1):
            value += weights[i]
        ceiling = min(ceiling, value)
    return float(ceiling)


@numba.njit(cache=True, error_model="numpy")
def _refine_by_swaps(
    weights: FloatArray,
    content: IntArray,
    loads: FloatArray,
    by_load: IntArray,
    stop_at: float,
    max_swaps: int,
) -> float:
    num_bins, per_bin = content.shape
    for b in range(num_bins):
        total = 0.0
        for s in range(per_bin):
            total += weights[content[b, s]]
        loads[b] = total
    _sort_bins(loads, by_load, False)
    for _ in range(max_swaps):
        heavy = 0  # the first of equally heavy bins
        for b in range(1, num_bins):
            if loads[b] > loads[heavy]:
                heavy = b
        heavy_load = loads[heavy]
        if heavy_load <= stop_at:
            break
        best_value = heavy_load * (1.0 - 1e-12)
        best_i, best_bin, best_j = -1, -1, -1
        # Lightest partners first: a swap with bin b leaves the pair at no less than
        # (heavy + load_b) / 2, so once the best found beats that, heavier bins cannot help.
        for q in range(num_bins):
            b = by_load[q]
            if b == heavy:
                continue
            if best_value <= 0.5 * (heavy_load + loads[b]):
                break
            half_gap = 0.5 * (heavy_load - loads[b])
            # The pair ends at its mean + |transfer − half_gap|: for each heavy item, the
            # partner item nearest (heavy item − half_gap).  Both bins are in weight
            # order, so that partner only moves forward.
            j = 0
            for i in range(per_bin):
                heavy_item = weights[content[heavy, i]]
                aim = heavy_item - half_gap
                while j + 1 < per_bin and weights[content[b, j + 1]] <= aim:
                    j += 1
                for candidate in range(j, min(j + 2, per_bin)):
                    transfer = heavy_item - weights[content[b, candidate]]
                    if transfer <= 0.0:
                        continue
                    worse = max(heavy_load - transfer, loads[b] + transfer)
                    if worse < best_value:
                        best_value, best_i, best_bin, best_j = worse, i, b, candidate
        if best_i < 0:
            break
        transfer = weights[content[heavy, best_i]] - weights[content[best_bin, best_j]]
        loads[heavy] -= transfer
        loads[best_bin] += transfer
        swapped = content[heavy, best_i]
        content[heavy, best_i] = content[best_bin, best_j]
        content[best_bin, best_j] = swapped
        _resort_items(weights, content[heavy], best_i)
        _resort_items(weights, content[best_bin], best_j)
        _resort_bins(loads, by_load, heavy)
        _resort_bins(loads, by_load, best_bin)
    # Exact loads: the running ones carry rounding from each swap.
    heaviest = 0.0
    for b in range(num_bins):
        total = 0.0
        for s in range(per_bin):
            total += weights[content[b, s]]
        loads[b] = total
        heaviest = max(heaviest, total)
    return heaviest


@numba.njit(cache=True, error_model="numpy")
def _resort_bins(loads: FloatArray, by_load: IntArray, changed: int) -> None:
    """Restore ascending (load, bin index) order of ``by_load`` after ``loads[changed]``
    changed."""
    i = 0
    while by_load[i] != changed:
        i += 1
    while i > 0 and (
        loads[by_load[i - 1]] > loads[changed]
        or (loads[by_load[i - 1]] == loads[changed] and by_load[i - 1] > changed)
    ):
        by_load[i] = by_load[i - 1]
        i -= 1
    while i + 1 < by_load.shape[0] and (
        loads[by_load[i + 1]] < loads[changed]
        or (loads[by_load[i + 1]] == loads[changed] and by_load[i + 1] < changed)
    ):
        by_load[i] = by_load[i + 1]
        i += 1
    by_load[i] = changed


@numba.njit(cache=True, error_model="numpy")
def _resort_items(weights: FloatArray, items: IntArray, changed: int) -> None:
    """Restore ascending weight order of ``items`` after ``items[changed]`` was replaced."""
    item = items[changed]
    i = changed
    while i > 0 and weights[items[i - 1]] > weights[item]:
        items[i] = items[i - 1]
        i -= 1
    while i + 1 < items.shape[0] and weights[items[i + 1]] < weights[item]:
        items[i] = items[i + 1]
        i += 1
    items[i] = item


# -- replication --------------------------------------------------------------------------
@numba.njit(cache=True, error_model="numpy")
def replicate_batch(load: FloatArray, num_slots: int, counts: IntArray) -> None:
    """``counts`` ``[B, n]``: min-max replica counts of ``load`` ``[B, n]``."""
    heap = np.empty(load.shape[1], dtype=np.int64)
    share = np.empty(load.shape[1], dtype=np.float64)
    for row in range(load.shape[0]):
        replicate_row(load[row], num_slots, counts[row], heap, share)


@numba.njit(cache=True, error_model="numpy")
def replicate_row(
    load: FloatArray, num_slots: int, counts: IntArray, heap: IntArray, share: FloatArray
) -> None:
    """Fill ``counts`` ``[n]`` and ``share`` ``[n]`` (load / count); ``heap`` is scratch.

    A binary max-heap of experts keyed by (replica load, lower id first) makes each extra
    slot ``O(log n)`` rather than a scan of every expert.
    """
    num_items = load.shape[0]
    for e in range(num_items):
        counts[e] = 1
        heap[e] = e
        share[e] = load[e]
    for start in range(num_items // 2 - 1, -1, -1):
        _sift_down(share, heap, start, num_items)
    for _ in range(num_slots - num_items):
        hottest = heap[0]
        counts[hottest] += 1
        share[hottest] = load[hottest] / counts[hottest]
        _sift_down(share, heap, 0, num_items)


@numba.njit(cache=True, error_model="numpy")
def _hotter(share: FloatArray, a: int, b: int) -> bool:
    """Does expert ``a`` come before ``b``: heavier replicas, then the lower id."""
    return bool(share[a] > share[b] or (share[a] == share[b] and a < b))


@numba.njit(cache=True, error_model="numpy")
def _sift_down(share: FloatArray, heap: IntArray, start: int, size: int) -> None:
    position = start
    while True:
        child = 2 * position + 1
        if child >= size:
            return
        if child + 1 < size and _hotter(share, heap[child + 1], heap[child]):
            child += 1
        if not _hotter(share, heap[child], heap[position]):
            return
        heap[position], heap[child] = heap[child], heap[position]
        position = child


# -- count search -------------------------------------------------------------------------
class Replicas(NamedTuple):
    """One count vector's replicas (``n`` experts, ``P`` slots), heaviest first."""

    weight: FloatArray  # [P] load / count of each replica's expert, descending
    expert: IntArray  # [P] expert of each replica
    share: FloatArray  # [n] load / count of each expert
    by_share: IntArray  # [n] experts, heaviest replicas first


class ProblemWorkspace(NamedTuple):
    """Scratch of ``solve`` for problems of ``n`` experts, ``P`` slots and ``m`` bins."""

    pack: Workspace
    heap: IntArray  # [n] replication heap
    replicas: Replicas  # the counts being refined
    candidate: Replicas  # a count vector being tried
    loads: FloatArray  # [m] bin loads
    candidate_content: IntArray  # [m, P/m] a candidate's bins
    candidate_loads: FloatArray  # [m]
    search_index: IntArray  # [3, P] scratch of ``could_beat``
    search_value: FloatArray  # [5, P]


@numba.njit(cache=True, error_model="numpy")
def _new_replicas(num_items: int, num_slots: int) -> Replicas:
    return Replicas(
        np.empty(num_slots, dtype=np.float64),
        np.empty(num_slots, dtype=np.int64),
        np.empty(num_items, dtype=np.float64),
        np.empty(num_items, dtype=np.int64),
    )


@numba.njit(cache=True, error_model="numpy")
def new_problem_workspace(num_items: int, num_slots: int, num_bins: int) -> ProblemWorkspace:
    return ProblemWorkspace(
        new_workspace(num_slots, num_bins),
        np.empty(num_items, dtype=np.int64),
        _new_replicas(num_items, num_slots),
        _new_replicas(num_items, num_slots),
        np.empty(num_bins, dtype=np.float64),
        np.empty((num_bins, num_slots // num_bins), dtype=np.int64),
        np.empty(num_bins, dtype=np.float64),
        np.empty((3, num_slots), dtype=np.int64),
        np.empty((5, num_slots), dtype=np.float64),
    )


@numba.njit(cache=True, error_model="numpy")
def _expand(counts: IntArray, replicas: Replicas) -> None:
    """Fill ``replicas`` for ``counts`` ``[n]`` from ``replicas.share``: heaviest first,
    equal weights by ascending expert (the order a stable sort of replicas in expert order
    gives)."""
    num_items = counts.shape[0]
    share, by_share = replicas.share, replicas.by_share
    if num_items <= INSERTION_SORT_LIMIT:
        for i in range(num_items):
            j = i - 1
            while j >= 0 and share[by_share[j]] < share[i]:
                by_share[j + 1] = by_share[j]
                j -= 1
            by_share[j + 1] = i
    else:
        by_share[:] = np.argsort(-share, kind="mergesort")
    position = 0
    for e in by_share:
        for _ in range(counts[e]):
            replicas.weight[position] = share[e]
            replicas.expert[position] = e
            position += 1


@numba.njit(cache=True, error_model="numpy")
def solve(
    load: FloatArray,
    num_bins: int,
    floor: float,
    options: IntArray,
    work: ProblemWorkspace,
    counts: IntArray,
    content: IntArray,
) -> float:
    """Replica counts and their bins for one problem; returns the heaviest bin.

    ``load`` ``[n]``; fills ``counts`` ``[n]`` (≥ 1, summing to the ``P`` slots),
    ``work.replicas`` and ``content`` ``[m, P/m]`` (indices into ``work.replicas`` per
    bin).  ``floor``: a bin load no placement of the
    problem's layer can go below anyway (in hierarchical mode, the busiest node's mean
    rank); problems already near it are left alone.  ``options`` ``[C, n]``: every count
    vector to try, or none for the local search.
    """
    num_slots = work.replicas.expert.shape[0]
    replicate_row(load, num_slots, counts, work.heap, work.replicas.share)
    _expand(counts, work.replicas)
    heaviest = pack_sorted(
        work.replicas.weight, num_bins, work.pack, content, work.loads, floor, MAX_REFINEMENT_SWAPS
    )
    # No counts pack below the mean bin or the hottest replica of min-max replication.
    bound = max(load.sum() / num_bins, floor)
    for e in range(load.shape[0]):
        bound = max(bound, load[e] / counts[e])
    if heaviest <= bound * (1 + GAP_TO_SEARCH):
        return heaviest
    if options.shape[0] > 0:
        improved = _exhaustive(load, num_bins, floor, options, heaviest, work, counts)
    else:
        good_enough = bound * (1 + REFINEMENT_TOLERANCE)
        improved = _local(load, num_bins, floor, good_enough, heaviest, work, counts, content)
    if improved < heaviest:
        for e in range(load.shape[0]):
            work.replicas.share[e] = load[e] / counts[e]
        _expand(counts, work.replicas)
        heaviest = pack_sorted(
            work.replicas.weight,
            num_bins,
            work.pack,
            content,
            work.loads,
            floor,
            MAX_REFINEMENT_SWAPS,
        )
    return heaviest


@numba.njit(cache=True, error_model="numpy")
def _replica_order(share: FloatArray) -> IntArray:
    """``[n·(K−1), 2]``: every (expert, count ≥ 1) of ``share`` ``[n, K]``, heaviest replica
    first, equal ones by ascending expert (``_expand``'s order)."""
    most = share.shape[1] - 1
    flat = np.argsort(-np.ascontiguousarray(share[:, 1:]).ravel(), kind="mergesort")
    order = np.empty((flat.shape[0], 2), dtype=np.int64)
    for t in range(flat.shape[0]):
        order[t, 0] = flat[t] // most
        order[t, 1] = flat[t] % most + 1
    return order


@numba.njit(cache=True, error_model="numpy")
def _expand_in_order(
    counts: IntArray, share: FloatArray, order: IntArray, weight: FloatArray
) -> None:
    """``weight`` ``[P]``: the replica weights of ``counts`` ``[n]``, heaviest first, as
    ``_expand`` orders them, without a sort per candidate: walk every (expert, count)
    heaviest first and keep those ``counts`` picks, until the slots are full."""
    position, num_slots = 0, weight.shape[0]
    for t in range(order.shape[0]):
        k = order[t, 1]
        if counts[order[t, 0]] == k:
            value = share[order[t, 0], k]
            for _ in range(k):
                weight[position] = value
                position += 1
            if position == num_slots:
                return


@numba.njit(cache=True, error_model="numpy")
def _try(
    share: FloatArray,
    num_bins: int,
    option: IntArray,
    best: float,
    floor: float,
    max_swaps: int,
    work: ProblemWorkspace,
) -> float:
    """Heaviest bin of ``option``'s packing (refined by at most ``max_swaps`` swaps), or
    ``inf`` when its lower bound says it cannot beat ``best`` (the local search's step).
    ``share`` ``[n, K]``: load / k of each expert for ``k < K``.  Leaves the packing in
    ``work.candidate_content`` over ``work.candidate``."""
    for e in range(option.shape[0]):
        work.candidate.share[e] = share[e, option[e]]
    _expand(option, work.candidate)
    weights = work.candidate.weight
    if cardinality_bound(weights, num_bins) >= best * (1 - IMPROVEMENT):
        return np.inf
    return pack_sorted(
        weights,
        num_bins,
        work.pack,
        work.candidate_content,
        work.candidate_loads,
        floor,
        max_swaps,
    )


@numba.njit(cache=True, error_model="numpy")
def could_beat(
    weights: FloatArray, num_bins: int, best: float, index: IntArray, value: FloatArray
) -> bool:
    """Could some packing of ``weights`` ``[n]`` (heaviest first) into ``num_bins`` bins of
    ``n/m`` have its heaviest bin below ``best``?  False only when none can.

    Every bin must then lie in ``[total − (m − 1)·best, best)``: near the optimum that
    window is a few percent of a bin wide, and few ways to fill a bin fit in it.  A
    depth-first search fills bins one by one, each opened with the heaviest replica left
    (so no packing is visited twice), adding replicas in weight order, skipping one equal
    to the last tried (the same state again) and cutting a bin whose lightest completion
    is too heavy or heaviest too light.  Each bin's window narrows with the load left for
    the bins still open: each of them below ``best`` and above the window's floor.
    Problems over ``FEASIBILITY_ITEMS`` replicas, or searches past ``FEASIBILITY_STEPS``,
    answer True (the candidate is packed as before).  Iterative: numba's cache breaks
    recursive functions.  ``index`` ``[3, ≥ n]`` and ``value`` ``[5, ≥ n]`` are scratch.
    """
    num_items = weights.shape[0]
    if num_items > FEASIBILITY_ITEMS or num_bins == 1:
        return True
    per_bin = num_items // num_bins
    total = weights.sum()
    # Below ``best`` as ``_exhaustive`` accepts it, widened by a rounding margin: summing
    # in another order than the packing must never make a fitting candidate look unfit.
    margin = 1e-9 * total
    high = best * (1 - IMPROVEMENT) + margin
    low = total - (num_bins - 1) * high - margin
    if lightest_bin_ceiling(weights, num_bins) < low:
        return False  # some bin of every packing is under the window
    pick, cursor, used = index[0], index[1], index[2]  # per depth; per replica (0 / 1)
    tried, before = value[0], value[1]  # per depth: last weight tried, the bin's sum so far
    # Per depth: the load of the closed bins and the window of the bin being filled.
    placed, floor_at, ceiling_at = value[2], value[3], value[4]
    used[:num_items] = 0
    # ``slot`` (``depth % per_bin``) and ``open_bins`` (bins not closed yet) are kept up to
    # date rather than divided for: an integer division costs as much as the rest of a step.
    depth, slot, steps, open_bins = 0, 0, FEASIBILITY_STEPS, num_bins
    cursor[0], tried[0], before[0], placed[0] = 0, -1.0, 0.0, 0.0
    floor_at[0], ceiling_at[0] = _bin_window(total, num_bins, low, high, margin)
    while True:
        left = per_bin - slot - 1  # replicas the bin needs after this one
        chosen = -1
        if slot == 0:  # the heaviest replica left opens the bin: one choice only
            if cursor[depth] == 0:
                chosen = 0
                while used[chosen]:
                    chosen += 1
            cursor[depth] = num_items
        else:
            i = cursor[depth]
            while i < num_items:
                if used[i] or weights[i] == tried[depth]:
                    i += 1
                    continue
                # Lightest completion: the ``left`` lightest free replicas after i.
                lightest, found, j = 0.0, 0, num_items - 1
                while found < left and j > i:
                    if not used[j]:
                        lightest += weights[j]
                        found += 1
                    j -= 1
                if found < left:
                    i = num_items  # too few replicas after i to close the bin
                    break
                if before[depth] + weights[i] + lightest >= ceiling_at[depth]:
                    i += 1  # too heavy; a lighter replica may fit
                    continue
                # Heaviest completion: the next ``left`` free replicas after i.
                heaviest, found, j = 0.0, 0, i + 1
                while found < left:
                    if not used[j]:
                        heaviest += weights[j]
                        found += 1
                    j += 1
                if before[depth] + weights[i] + heaviest < floor_at[depth]:
                    i = num_items  # too light, and every later replica is lighter still
                    break
                chosen = i
                break
            cursor[depth] = i + 1
        if chosen < 0:  # nothing (more) fits here: back to the previous choice
            depth -= 1
            if depth < 0:
                return False
            if slot == 0:
                open_bins += 1  # back into the bin before
            slot = slot - 1 if slot > 0 else per_bin - 1
            used[pick[depth]] = 0
            continue
        tried[depth] = weights[chosen]
        load = before[depth] + weights[chosen]
        if left == 0 and (load < floor_at[depth] or load >= ceiling_at[depth]):
            continue
        used[chosen], pick[depth] = 1, chosen
        steps -= 1
        depth += 1
        slot = 0 if left == 0 else slot + 1
        if depth == num_items or steps < 0:
            return True
        cursor[depth], tried[depth] = (0, -1.0) if left == 0 else (chosen + 1, -1.0)
        before[depth] = 0.0 if left == 0 else load
        placed[depth] = placed[depth - 1] + weights[chosen]
        if left == 0:  # a bin closed: the next one's window, from the load left
            open_bins -= 1
            floor_at[depth], ceiling_at[depth] = _bin_window(
                total - placed[depth], open_bins, low, high, margin
            )
        else:
            floor_at[depth], ceiling_at[depth] = floor_at[depth - 1], ceiling_at[depth - 1]


@numba.njit(cache=True, error_model="numpy")
def _bin_window(
    rest: float, open_bins: int, low: float, high: float, margin: float
) -> tuple[float, float]:
    """``[floor, ceiling)`` of the next bin's load when ``rest`` is left for ``open_bins``
    bins, each in ``[low, high)``: the others take less than ``high`` each and at least
    ``low`` each (widened by ``margin``, as ``low`` and ``high`` are, for rounding)."""
    others = open_bins - 1
    return max(low, rest - others * high - margin), min(high, rest - others * low + margin)


@numba.njit(cache=True, error_model="numpy")
def _share_table(load: FloatArray, most: int) -> FloatArray:
    """``[n, most + 1]``: load / k of each expert for ``k = 1 … most`` (divisions are
    costly next to the rest of a small candidate's packing)."""
    share = np.empty((load.shape[0], most + 1), dtype=np.float64)
    for e in range(load.shape[0]):
        share[e, 0] = np.inf
        for k in range(1, most + 1):
            share[e, k] = load[e] / k
    return share


@numba.njit(cache=True, error_model="numpy")
def _exhaustive(
    load: FloatArray,
    num_bins: int,
    floor: float,
    options: IntArray,
    heaviest: float,
    work: ProblemWorkspace,
    counts: IntArray,
) -> float:
    """Every count vector whose bound is below ``heaviest``, in bound order; updates
    ``counts`` and returns the best packing's heaviest bin."""
    num_items = load.shape[0]
    mean = load.sum() / num_bins
    share = _share_table(load, options.max())
    order = _replica_order(share)
    bounds = np.empty(options.shape[0], dtype=np.float64)
    below = np.empty(options.shape[0], dtype=np.int64)
    num_below = 0
    limit = heaviest * (1 - IMPROVEMENT)
    for c in range(options.shape[0]):
        bound = mean
        for e in range(num_items):
            bound = max(bound, share[e, options[c, e]])
            if bound >= limit:
                break  # out already: the rest of its bound changes nothing
        if bound < limit:
            bounds[num_below] = bound
            below[num_below] = c
            num_below += 1
    # The workspace's arrays, taken out once: passing the workspace to a helper per
    # candidate costs more than the candidate's bounds (every array it holds is
    # reference-counted on each call).
    weights = work.candidate.weight
    index, scratch = work.search_index, work.search_value
    pack, content, loads = work.pack, work.candidate_content, work.candidate_loads
    best, best_option = heaviest, -1
    for position in np.argsort(bounds[:num_below], kind="mergesort"):
        limit = best * (1 - IMPROVEMENT)
        if bounds[position] >= limit:
            break  # this and every later option: no packing can beat the best
        c = below[position]
        _expand_in_order(options[c], share, order, weights)
        # Packed only when neither its cardinality bound nor ``could_beat`` rules it out.
        if cardinality_bound(weights, num_bins) >= limit:
            continue
        if not could_beat(weights, num_bins, best, index, scratch):
            continue
        got = pack_sorted(weights, num_bins, pack, content, loads, floor, MAX_REFINEMENT_SWAPS)
        if got < limit:
            best, best_option = got, c
    if best_option >= 0:
        counts[:] = options[best_option]
    return best


@numba.njit(cache=True, error_model="numpy")
def _local(
    load: FloatArray,
    num_bins: int,
    floor: float,
    good_enough: float,
    heaviest: float,
    work: ProblemWorkspace,
    counts: IntArray,
    content: IntArray,
) -> float:
    """Rounds of moving one replica from a donor to a receiver; updates ``counts`` ``[n]``.

    Each round scores every (donor, receiver) pair on the current packing — every bin's
    load once the two experts' replicas change weight and one donor slot (on the bin that
    gains most from it) holds the receiver instead — and repacks only the best few.  The
    bound of the counts alone (mean bin, hottest replica) cannot rank them: under heavy
    skew one expert's replicas set it for every candidate.  ``content`` is the packing of
    ``counts`` on entry (over ``work.replicas``); later rounds use the best candidate's.
    """
    num_items = load.shape[0]
    per_bin = content.shape[1]
    share = _share_table(load, work.replicas.expert.shape[0] - num_items + 1)
    num_pairs = (DONORS + CROWDED_DONORS) * RECEIVERS
    options = np.empty((num_pairs, num_items), dtype=np.int64)
    estimates = np.empty(num_pairs, dtype=np.float64)
    bounds = np.empty(num_pairs, dtype=np.float64)
    experts = work.replicas.expert.copy()  # of the current packing's replicas
    bins = content.copy()
    per_bin_count = np.zeros((num_bins, num_items), dtype=np.int64)
    bin_load = np.empty(num_bins, dtype=np.float64)
    after = np.empty(num_bins, dtype=np.float64)
    spare_cost = np.empty(num_items, dtype=np.float64)
    per_replica = np.empty(num_items, dtype=np.float64)
    for _ in range(LOCAL_ROUNDS):
        if heaviest <= good_enough:
            break
        per_bin_count[:] = 0
        for e in range(num_items):
            per_replica[e] = share[e, counts[e]]
            spare_cost[e] = share[e, counts[e] - 1] if counts[e] >= 2 else np.inf
        for b in range(num_bins):
            total = 0.0
            for s in range(per_bin):
                expert = experts[bins[b, s]]
                per_bin_count[b, expert] += 1
                total += per_replica[expert]
            bin_load[b] = total
        # Donors: the cheapest spare replicas and the most replicated experts; receivers:
        # the heaviest replicas.
        donors = np.concatenate(
            (
                np.argsort(spare_cost, kind="mergesort")[:DONORS],
                np.argsort(-counts, kind="mergesort")[:CROWDED_DONORS],
            )
        )
        receivers = np.argsort(-per_replica, kind="mergesort")[:RECEIVERS]
        found = 0
        for k, donor in enumerate(donors):
            if counts[donor] < 2 or (k >= DONORS and (donors[:k] == donor).any()):
                continue
            donor_gain = share[donor, counts[donor] - 1] - per_replica[donor]
            for receiver in receivers:
                if receiver == donor:
                    continue
                receiver_gain = share[receiver, counts[receiver] + 1] - per_replica[receiver]
                converted_gain = (
                    share[receiver, counts[receiver] + 1] - share[donor, counts[donor] - 1]
                )
                worst = 0.0
                for b in range(num_bins):
                    after[b] = (
                        bin_load[b]
                        + per_bin_count[b, donor] * donor_gain
                        + per_bin_count[b, receiver] * receiver_gain
                    )
                # The donor slot that turns into the receiver: on the bin it lightens most
                # relative to the others, i.e. the heaviest bin holding the donor.
                target = -1
                for b in range(num_bins):
                    if per_bin_count[b, donor] > 0 and (target < 0 or after[b] > after[target]):
                        target = b
                after[target] += converted_gain
                for b in range(num_bins):
                    worst = max(worst, after[b])
                if share[donor, counts[donor] - 1] < heaviest * (1 - IMPROVEMENT):
                    option = options[found]
                    option[:] = counts
                    option[donor] -= 1
                    option[receiver] += 1
                    estimates[found] = worst
                    bounds[found] = max(
                        _hottest_other(per_replica, donor, receiver),
                        share[donor, counts[donor] - 1],
                        share[receiver, counts[receiver] + 1],
                    )
                    found += 1
        if found == 0:
            break
        best, best_option = heaviest, -1
        # Lowest bound first (a move that leaves one replica too heavy is a trap no later
        # move undoes), equal bounds by estimate; only when none of a batch improves, the
        # next batch.
        ranked = np.argsort(estimates[:found], kind="mergesort")
        ranked = ranked[np.argsort(bounds[:found][ranked], kind="mergesort")]
        for start in range(0, found, CANDIDATES_PER_ROUND):
            for c in ranked[start : start + CANDIDATES_PER_ROUND]:
                got = _try(share, num_bins, options[c], best, floor, MAX_REFINEMENT_SWAPS, work)
                if got < best * (1 - IMPROVEMENT):
                    best, best_option = got, c
                    bins[:] = work.candidate_content
                    experts[:] = work.candidate.expert
            if best_option >= 0:
                break
        if best_option < 0:
            break
        counts[:] = options[best_option]
        heaviest = best
    return heaviest


@numba.njit(cache=True, error_model="numpy")
def _hottest_other(per_replica: FloatArray, first: int, second: int) -> float:
    """The heaviest of ``per_replica`` ``[n]`` other than experts ``first`` and ``second``."""
    hottest = 0.0
    for e in range(per_replica.shape[0]):
        if e not in (first, second):
            hottest = max(hottest, per_replica[e])
    return hottest


# -- layers and nodes ---------------------------------------------------------------------
@numba.njit(cache=True, error_model="numpy")
def place_layers(
    load: FloatArray,
    groups_of_node: IntArray,
    ranks_per_node: int,
    options: IntArray,
    phy2log: IntArray,
) -> None:
    """Fill ``phy2log`` ``[L, P]`` for ``load`` ``[L, E]``, the groups of each node being
    ``groups_of_node`` ``[L, N, G/N]`` (ascending).  Inside a rank, slots hold experts in
    ascending id order.  ``options`` ``[C, E/N]``: count vectors for an exhaustive search
    (or none)."""
    num_layers, num_experts = load.shape
    _, nodes, groups_per_node = groups_of_node.shape
    group_size = num_experts // (nodes * groups_per_node)
    experts_per_node = num_experts // nodes
    slots_per_node = phy2log.shape[1] // nodes
    per_rank = slots_per_node // ranks_per_node
    work = new_problem_workspace(experts_per_node, slots_per_node, ranks_per_node)
    node_experts = np.empty(experts_per_node, dtype=np.int64)  # global id of each local one
    node_load = np.empty(experts_per_node, dtype=np.float64)
    counts = np.empty(experts_per_node, dtype=np.int64)
    content = np.empty((ranks_per_node, per_rank), dtype=np.int64)
    node_total = np.empty(nodes, dtype=np.float64)
    for layer in range(num_layers):
        for node in range(nodes):
            total = 0.0
            for g in groups_of_node[layer, node]:
                for e in range(g * group_size, (g + 1) * group_size):
                    total += load[layer, e]
            node_total[node] = total
        # No rank of the layer can be lighter than the busiest node's mean rank.
        floor = node_total.max() / ranks_per_node
        for node in range(nodes):
            position = 0
            for g in groups_of_node[layer, node]:
                for e in range(g * group_size, (g + 1) * group_size):
                    node_experts[position] = e
                    node_load[position] = load[layer, e]
                    position += 1
            solve(node_load, ranks_per_node, floor, options, work, counts, content)
            for rank in range(ranks_per_node):
                base = node * slots_per_node + rank * per_rank
                for s in range(per_rank):
                    expert = node_experts[work.replicas.expert[content[rank, s]]]
                    # Insertion sort: a rank holds few slots, in ascending expert id.
                    j = base + s - 1
                    while j >= base and phy2log[layer, j] > expert:
                        phy2log[layer, j + 1] = phy2log[layer, j]
                        j -= 1
                    phy2log[layer, j + 1] = expert
