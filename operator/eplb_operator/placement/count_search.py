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

import numpy as np
import numpy.typing as npt

from eplb_operator.placement.packing import pack
from eplb_operator.placement.replication import expand_replicas

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GAP_TO_SEARCH = 5e-3
EXHAUSTIVE_LIMIT = 512
EXHAUSTIVE_BATCH = 16
LOCAL_ROUNDS = 4
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
    active = needy
    for _ in range(LOCAL_ROUNDS):
        rows, candidates = [], []
        for row in active:
            row_candidates: list[tuple[float, IntArray]] = []
            c, w = counts[row], load[row]
            spare = np.flatnonzero(c >= 2)
            if spare.size == 0:
                continue
            cheap = spare[np.argsort(w[spare] / (c[spare] - 1), kind="stable")[:DONORS]]
            crowded = spare[np.argsort(-c[spare], kind="stable")[:2]]
            donors = np.union1d(cheap, crowded)
            receivers = np.argsort(-(w / c), kind="stable")[:RECEIVERS]
            for donor in donors:
                for receiver in receivers:
                    if donor == receiver:
                        continue
                    option = c.copy()
                    option[donor] -= 1
                    option[receiver] += 1
                    bound = max(w.sum() / num_bins, (w / option).max())
                    if bound < heaviest[row] * (1 - 1e-12):
                        row_candidates.append((bound, option))
            # Pack only the most promising few: those with the lowest bound.
            row_candidates.sort(key=lambda candidate: candidate[0])
            for _, option in row_candidates[:CANDIDATES_PER_ROUND]:
                rows.append(row)
                candidates.append(option)
        if not candidates:
            return
        row_of = np.array(rows)
        candidate_heaviest, _ = packed_heaviest(load[row_of], np.stack(candidates), num_bins)
        improved = []
        for row in active:
            mine = np.flatnonzero(row_of == row)
            if mine.size == 0:
                continue
            best = mine[int(np.argmin(candidate_heaviest[mine]))]
            if candidate_heaviest[best] < heaviest[row] * (1 - 1e-9):
                counts[row] = candidates[best]
                heaviest[row] = candidate_heaviest[best]
                improved.append(row)
        if not improved:
            return
        active = np.array(improved)
