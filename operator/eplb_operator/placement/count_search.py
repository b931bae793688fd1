"""Choose replica counts together with the packing, where min-max replication falls short.

Min-max replication minimises the hottest *replica*, but ranks hold whole slots: with few
slots per rank (Mixtral: 8 experts on 4 ranks × 3 slots) the best counts for the *ranks*
are often different.  For each problem (a layer, or a layer's node) whose packing is off
the bound of any counts (mean bin, min-max hottest replica) by more than
``GAP_TO_SEARCH``, other counts are tried (``compiled.solve``):

- small problems (at most ``EXHAUSTIVE_LIMIT`` ways to share the extra slots): every count
  vector whose own bound (mean bin, hottest replica) is below the best packing so far, in
  bound order.  On Mixtral's shape that is 100–330 candidates per layer: the bound says
  little about how well replicas of given weights fit three to a rank, and every cheaper
  ranking we measured (largest differencing without refinement, a capped number of
  candidates, neighbourhood or placement-level local search) loses 0.3–3% of balance.
  So rather than ranking them, each candidate is first checked exactly
  (``compiled.could_beat``): near the best, every rank must land in a window a few
  percent wide; a bound on the lightest rank (``compiled.lightest_bin_ceiling``) or a
  small depth-first search over the replicas shows that no packing of most candidates
  fits it.  Only the rest (3–10 per layer on Mixtral, from ~90) are
  packed; the result is the same as packing them all;
- larger ones: rounds of moving one replica from a donor to a receiver, while they
  improve.  Receivers are the experts with the heaviest replicas *and the experts on the
  heaviest rank of the current packing* (one more replica of those lightens exactly the
  rank that decides the imbalance); donors are the experts whose spare replica costs least.

Any candidate is packed only when its cardinality bound (``compiled.cardinality_bound``)
could beat the best packing so far.
"""

from __future__ import annotations

import functools
import itertools
from math import comb

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

EXHAUSTIVE_LIMIT = 512


def exhaustive_options(num_items: int, num_slots: int) -> IntArray:
    """``[C, n]``: every way to share ``num_slots`` over ``n`` experts (each ≥ 1) when there
    are at most ``EXHAUSTIVE_LIMIT`` of them, else ``[0, n]`` (the local search is used).

    Read-only either way: numba compiles (and a one-shot process loads from its cache) one
    kernel per argument type, and a read-only array is another type than a writable one.
    """
    extra = num_slots - num_items
    if comb(num_items + extra - 1, extra) > EXHAUSTIVE_LIMIT:
        return _read_only(np.empty((0, num_items), dtype=np.int64))
    return _all_counts(num_items, extra)


def _read_only(array: IntArray) -> IntArray:
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=16)
def _all_counts(num_items: int, extra: int) -> IntArray:
    options = []
    # Stars and bars: the positions of n - 1 bars among extra + n - 1 places.
    for bars in itertools.combinations(range(extra + num_items - 1), num_items - 1):
        edges = (-1, *bars, extra + num_items - 1)
        options.append([edges[i + 1] - edges[i] for i in range(num_items)])
    return _read_only(np.array(options, dtype=np.int64).reshape(-1, num_items))
