import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_operator.placement.compiled import REFINEMENT_TOLERANCE
from eplb_operator.placement.packing import members, pack
from eplb_operator.placement.replication import expand_replicas, replicate


def bin_loads(weights: np.ndarray, bins: np.ndarray, num_bins: int) -> np.ndarray:
    pairs = zip(weights, bins, strict=True)
    return np.stack([np.bincount(b, weights=w, minlength=num_bins) for w, b in pairs])


def test_docstring_example_beats_lpt() -> None:
    weights = np.array([[8.0, 7, 6, 5, 4, 2]])
    bins = pack(weights, 2)
    assert sorted(bin_loads(weights, bins, 2)[0].tolist()) == [16.0, 16.0]


def optimum(weights: np.ndarray, num_bins: int) -> float:
    """Heaviest bin of the best equal-cardinality packing, by brute force (tiny inputs)."""
    per_bin = len(weights) // num_bins
    best = np.inf
    for labels in itertools.product(range(num_bins), repeat=len(weights)):
        if all(labels.count(b) == per_bin for b in range(num_bins)):
            loads = np.bincount(labels, weights=weights, minlength=num_bins)
            best = min(best, loads.max())
    return float(best)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 100), min_size=6, max_size=6),
    st.sampled_from([2, 3]),
)
def test_small_instances_are_near_optimal(values: list[int], num_bins: int) -> None:
    weights = np.array([values], dtype=np.float64)
    bins = pack(weights, num_bins)
    got = bin_loads(weights, bins, num_bins)[0].max()
    best = optimum(weights[0], num_bins)
    # Within the refinement tolerance of the true optimum.
    assert got <= best * (1 + REFINEMENT_TOLERANCE) + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),  # batch
    st.sampled_from([(1, 5), (2, 3), (4, 4), (8, 9), (3, 1)]),  # (bins, items per bin)
    st.integers(0, 2**31 - 1),
)
def test_every_bin_gets_exactly_its_share(batch: int, shape: tuple[int, int], seed: int) -> None:
    num_bins, per_bin = shape
    weights = np.random.default_rng(seed).pareto(1.5, size=(batch, num_bins * per_bin))
    bins = pack(weights, num_bins)
    counts = np.stack([np.bincount(b, minlength=num_bins) for b in bins])
    assert (counts == per_bin).all()
    assert members(bins, num_bins).shape == (batch, num_bins, per_bin)
    # Equal input, equal output.
    assert (pack(weights.copy(), num_bins) == bins).all()


def test_refinement_improves_on_lpt() -> None:
    """On skewed loads, packing beats the greedy the engines ship (LPT)."""
    rng = np.random.default_rng(7)
    weights = rng.pareto(1.2, size=(32, 72))
    ours = bin_loads(weights, pack(weights, 8), 8).max(axis=1)
    lpt = np.empty(32)
    for row, w in enumerate(weights):
        loads, filled = np.zeros(8), np.zeros(8, dtype=int)
        for item in np.argsort(-w, kind="stable"):
            candidates = np.where(filled < 9, loads, np.inf)
            target = int(np.argmin(candidates))
            loads[target] += w[item]
            filled[target] += 1
        lpt[row] = loads.max()
    # Per problem: no worse than LPT, or already within the refinement tolerance of the
    # trivial bound (where refinement stops on purpose).  On average: better.
    bound = np.maximum(weights.sum(axis=1) / 8, weights.max(axis=1))
    assert (ours <= np.maximum(lpt, bound * (1 + REFINEMENT_TOLERANCE)) + 1e-9).all()
    assert ours.mean() < lpt.mean()


def test_replicate_minimises_the_hottest_replica() -> None:
    load = np.array([[90.0, 30.0, 20.0, 10.0]])
    counts = replicate(load, 6)
    assert counts.tolist() == [[3, 1, 1, 1]]
    assert expand_replicas(counts).tolist() == [[0, 0, 0, 1, 2, 3]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=7), st.integers(0, 6))
def test_replicate_is_optimal(values: list[int], extra: int) -> None:
    load = np.array([values], dtype=np.float64)
    counts = replicate(load, len(values) + extra)[0]
    assert counts.min() >= 1 and counts.sum() == len(values) + extra
    hottest = (load[0] / counts).max()
    # No other distribution of the extra replicas has a lighter hottest replica.
    for extra_counts in itertools.product(range(extra + 1), repeat=len(values)):
        if sum(extra_counts) == extra:
            other = load[0] / (1 + np.array(extra_counts))
            assert hottest <= other.max() + 1e-9
