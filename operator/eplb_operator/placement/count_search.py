"""Choose replica counts together with the packing, where min-max replication falls short.

Min-max replication minimises the hottest *replica*, but ranks hold whole slots: with few
slots per rank (Mixtral: 8 experts on 4 ranks × 3 slots) the best counts for the *ranks*
are often different.  For each problem whose packing is off the lower bound by more than
``GAP_TO_SEARCH``, try other counts and keep the one that packs best:
- small problems (at most ``EXHAUSTIVE_LIMIT`` ways to share the extra slots): all of them;
- larger ones: a few rounds of moving one replica from a cheap donor to a hot expert.
Every candidate is packed by the same packer, in one batch per round, unless its own lower
bound (mean bin, hottest replica) already rules it out.
"""

from __future__ import annotations

import functools
import itertools
from math import comb

import numba
import numpy as np
import numpy.typing as npt

from eplb_operator.placement.packing import _pack_batch, pack
from eplb_operator.placement.replication import expand_replicas

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GAP_TO_SEARCH = 5e-3
EXHAUSTIVE_LIMIT = 512
EXHAUSTIVE_BATCH = 16
LOCAL_ROUNDS = 6
DONORS = 4
CANDIDATES_PER_ROUND = 8
RECEIVERS = 4


def packed_heaviest(
    load: FloatArray, counts: IntArray, num_bins: int
) -> tuple[FloatArray, IntArray]:
    """Heaviest bin ``[B]`` and bin of each replica ``[B, P]`` for ``counts`` ``[B, n]``."""
    replicas = expand_replicas(counts)
    weights = np.take_along_axis(load / counts, replicas, axis=1)
    bins = pack(weights, num_bins)
    batch = weights.shape[0]
    flat_bins = (bins + (np.arange(batch) * num_bins)[:, None]).ravel()
    per_bin = np.bincount(flat_bins, weights=weights.ravel(), minlength=batch * num_bins)
    return per_bin.reshape(batch, num_bins).max(axis=1), bins


def search_counts(
    load: FloatArray, counts: IntArray, num_bins: int, floor: FloatArray | None = None
) -> tuple[IntArray, IntArray]:
    """Replica counts ``[B, n]`` for ``load`` ``[B, n]``, starting from ``counts``, and the
    bin of each replica ``[B, P]`` (replicas in ``expand_replicas`` order).

    ``floor`` ``[B]``: a bin load no placement of the row's layer can go below anyway (in
    hierarchical mode, the busiest node's mean rank); rows already near it are left alone.
    """
    counts = counts.copy()
    heaviest, bins = packed_heaviest(load, counts, num_bins)
    bound = np.maximum(load.sum(axis=1) / num_bins, (load / counts).max(axis=1))
    if floor is not None:
        bound = np.maximum(bound, floor)
    needy = np.flatnonzero(heaviest > bound * (1 + GAP_TO_SEARCH))
    if needy.size == 0:
        return counts, bins
    num_items = load.shape[1]
    extra = int(counts[0].sum()) - num_items
    before = counts[needy].copy()
    if comb(num_items + extra - 1, extra) <= EXHAUSTIVE_LIMIT:
        _exhaustive(load, counts, heaviest, needy, num_bins, extra)
    else:
        _local(load, counts, heaviest, needy, num_bins)
    changed = needy[(counts[needy] != before).any(axis=1)]
    if changed.size:
        _, bins[changed] = packed_heaviest(load[changed], counts[changed], num_bins)
    return counts, bins


def _exhaustive(
    load: FloatArray,
    counts: IntArray,
    heaviest: FloatArray,
    needy: IntArray,
    num_bins: int,
    extra: int,
) -> None:
    options = _all_counts(load.shape[1], extra)
    for row in needy:
        mean = load[row].sum() / num_bins
        # Options in order of their own bound; none can beat a packing already at its bound.
        bounds = np.maximum(mean, (load[row] / options).max(axis=1))
        order = np.argsort(bounds, kind="stable")
        for start in range(0, len(order), EXHAUSTIVE_BATCH):
            chunk = order[start : start + EXHAUSTIVE_BATCH]
            chunk = chunk[bounds[chunk] < heaviest[row] * (1 - 1e-12)]
            if chunk.size == 0:
                break
            candidate_heaviest, _ = packed_heaviest(
                np.repeat(load[row : row + 1], chunk.size, axis=0), options[chunk], num_bins
            )
            best = int(np.argmin(candidate_heaviest))  # first minimum: deterministic
            if candidate_heaviest[best] < heaviest[row] * (1 - 1e-12):
                counts[row] = options[chunk[best]]
                heaviest[row] = candidate_heaviest[best]


@functools.lru_cache(maxsize=16)
def _all_counts(num_items: int, extra: int) -> IntArray:
    """``[C, n]``: every way to give ``n`` experts one replica each plus ``extra`` more."""
    options = []
    # Stars and bars: the positions of n - 1 bars among extra + n - 1 places.
    for bars in itertools.combinations(range(extra + num_items - 1), num_items - 1):
        edges = (-1, *bars, extra + num_items - 1)
        options.append([edges[i + 1] - edges[i] for i in range(num_items)])
    return np.array(options, dtype=np.int64)


def _local(
    load: FloatArray, counts: IntArray, heaviest: FloatArray, needy: IntArray, num_bins: int
) -> None:
    for row in needy:
        heaviest[row] = _local_row(
            np.ascontiguousarray(load[row]), counts[row], num_bins, float(heaviest[row])
        )


@numba.njit(cache=True)
def _local_row(load: FloatArray, counts: IntArray, num_bins: int, heaviest: float) -> float:
    """Rounds of moving one replica from a donor to a hot expert, keeping the best packing.

    Updates ``counts`` ``[n]`` in place and returns its heaviest bin.  Compiled, because the
    rounds are many small steps.
    """
    num_items = load.shape[0]
    num_slots = int(counts.sum())
    mean = load.sum() / num_bins
    options = np.empty((DONORS * RECEIVERS + 2 * RECEIVERS, num_items), dtype=np.int64)
    bounds = np.empty(options.shape[0], dtype=np.float64)
    for _ in range(LOCAL_ROUNDS):
        per_replica = load / counts
        spare_cost = np.full(num_items, np.inf)
        crowd = np.zeros(num_items, dtype=np.int64)
        for e in range(num_items):
            if counts[e] >= 2:
                spare_cost[e] = load[e] / (counts[e] - 1)
                crowd[e] = counts[e]
        cheap = np.argsort(spare_cost, kind="mergesort")[:DONORS]
        crowded = np.argsort(-crowd, kind="mergesort")[:2]
        receivers = np.argsort(-per_replica, kind="mergesort")[:RECEIVERS]
        found = 0
        for donor_list in (cheap, crowded):
            for donor in donor_list:
                if counts[donor] < 2:
                    continue
                for receiver in receivers:
                    if receiver == donor:
                        continue
                    option = options[found]
                    option[:] = counts
                    option[donor] -= 1
                    option[receiver] += 1
                    bound = mean
                    for e in range(num_items):
                        bound = max(bound, load[e] / option[e])
                    duplicate = False
                    for k in range(found):
                        if (options[k] == option).all():
                            duplicate = True
                    if bound < heaviest * (1 - 1e-12) and not duplicate:
                        bounds[found] = bound
                        found += 1
        if found == 0:
            break
        # Pack only the most promising few: those with the lowest bound.
        order = np.argsort(bounds[:found], kind="mergesort")[:CANDIDATES_PER_ROUND]
        weights = np.empty((order.shape[0], num_slots), dtype=np.float64)
        for c in range(order.shape[0]):
            option = options[order[c]]
            position = 0
            for e in range(num_items):
                for _ in range(option[e]):
                    weights[c, position] = load[e] / option[e]
                    position += 1
        bins = np.empty((order.shape[0], num_slots), dtype=np.int64)
        _pack_batch(weights, num_bins, bins)
        best, best_heaviest = -1, heaviest * (1 - 1e-9)
        per_bin = np.empty(num_bins, dtype=np.float64)
        for c in range(order.shape[0]):
            per_bin[:] = 0.0
            for slot in range(num_slots):
                per_bin[bins[c, slot]] += weights[c, slot]
            if per_bin.max() < best_heaviest:
                best, best_heaviest = c, per_bin.max()
        if best < 0:
            break
        counts[:] = options[order[best]]
        heaviest = best_heaviest
    return heaviest
