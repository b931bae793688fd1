"""The compiled kernels against slow, obviously correct references on small inputs."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_operator.placement import Topology, rebalance, views
from eplb_operator.placement.compiled import cardinality_bound, could_beat, lightest_bin_ceiling
from eplb_operator.placement.count_search import exhaustive_options
from eplb_operator.placement.packing import pack
from eplb_operator.placement.replication import expand_replicas, replicate


def best_packing(weights: np.ndarray, num_bins: int) -> float:
    """Heaviest bin of the best equal-cardinality packing, by brute force."""
    per_bin = len(weights) // num_bins
    best = np.inf
    for labels in itertools.product(range(num_bins), repeat=len(weights)):
        if all(labels.count(b) == per_bin for b in range(num_bins)):
            best = min(best, np.bincount(labels, weights=weights, minlength=num_bins).max())
    return float(best)


def heaviest_lightest_bin(weights: np.ndarray, num_bins: int) -> float:
    """Lightest bin of the equal-cardinality packing whose lightest bin is heaviest."""
    per_bin = len(weights) // num_bins
    best = -np.inf
    for labels in itertools.product(range(num_bins), repeat=len(weights)):
        if all(labels.count(b) == per_bin for b in range(num_bins)):
            best = max(best, np.bincount(labels, weights=weights, minlength=num_bins).min())
    return float(best)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(2, 2), (2, 3), (3, 2), (2, 4), (4, 2)]),
    st.lists(st.integers(0, 1000), min_size=8, max_size=8),
)
def test_cardinality_bound_never_exceeds_the_optimum(
    shape: tuple[int, int], values: list[int]
) -> None:
    num_bins, per_bin = shape
    weights = np.sort(np.array(values[: num_bins * per_bin], dtype=np.float64))[::-1].copy()
    bound = cardinality_bound(weights, num_bins)
    assert bound <= best_packing(weights, num_bins) + 1e-9
    # And it is at least the classic bound (mean bin, heaviest item).
    assert bound >= max(weights.sum() / num_bins, weights[0]) - 1e-9


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(2, 2), (2, 3), (3, 2), (2, 4), (4, 2)]),
    st.lists(st.integers(0, 1000), min_size=8, max_size=8),
)
def test_lightest_bin_ceiling_is_never_below_any_packings_lightest_bin(
    shape: tuple[int, int], values: list[int]
) -> None:
    """``could_beat`` rejects a candidate when this ceiling is under its window's floor:
    every packing must then have a bin at most this heavy."""
    num_bins, per_bin = shape
    weights = np.sort(np.array(values[: num_bins * per_bin], dtype=np.float64))[::-1].copy()
    ceiling = lightest_bin_ceiling(weights, num_bins)
    assert ceiling >= heaviest_lightest_bin(weights, num_bins) - 1e-9


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from([(2, 2), (2, 3), (3, 2), (4, 2), (2, 4), (3, 3)]),
    st.lists(st.integers(0, 1000), min_size=9, max_size=9),
    st.floats(0.98, 1.08),
)
def test_could_beat_is_false_only_when_no_packing_beats_the_best(
    shape: tuple[int, int], values: list[int], margin: float
) -> None:
    """The exhaustive count search drops a candidate when ``could_beat`` says no packing of
    it gets under the best so far: that must never drop one that does (equal weights
    included, which the search skips as repeats)."""
    num_bins, per_bin = shape
    weights = np.sort(np.array(values[: num_bins * per_bin], dtype=np.float64))[::-1].copy()
    optimum = best_packing(weights, num_bins)
    best = optimum * margin
    index = np.empty((3, len(weights)), dtype=np.int64)
    value = np.empty((5, len(weights)), dtype=np.float64)
    answer = could_beat(weights, num_bins, best, index, value)
    if optimum < best * (1 - 1e-12):
        assert answer
    elif optimum > best * (1 + 1e-6):
        assert not answer  # and it does prune: nothing fits under the best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40), st.integers(0, 40))
def test_replication_matches_the_greedy_definition(values: list[int], extra: int) -> None:
    load = np.array([values], dtype=np.float64)
    counts = np.ones(len(values), dtype=np.int64)
    for _ in range(extra):  # each extra slot to the heaviest replica, lower id on ties
        counts[int(np.argmax(load[0] / counts))] += 1
    assert replicate(load, len(values) + extra)[0].tolist() == counts.tolist()


def best_over_all_counts(load: np.ndarray, topology: Topology) -> float:
    """Lowest heaviest rank over every count vector and every packing (brute force)."""
    best = np.inf
    for counts in exhaustive_options(topology.num_experts, topology.num_slots):
        weights = np.repeat(load / counts, counts)
        best = min(best, best_packing(weights, topology.num_ranks))
    return float(best)


@pytest.mark.parametrize("seed", range(6))
def test_small_problems_reach_the_optimum_over_counts_and_packings(seed: int) -> None:
    """Mixtral-like, scaled down: 4 experts on 2 ranks x 3 slots (exhaustive count search)."""
    rng = np.random.default_rng(seed)
    load = np.round(rng.pareto(1.0, size=4) * 100 + 1)
    topology = Topology(4, 2, 3)
    phy2log = rebalance(torch.from_numpy(load[None]), topology)
    got = views.rank_loads(torch.from_numpy(load[None]), phy2log, 2).max().item()
    assert got == pytest.approx(best_over_all_counts(load, topology), rel=1e-9)


@pytest.mark.parametrize("exponent", [1.5, 1.8])
def test_large_problems_search_counts_under_heavy_skew(exponent: float) -> None:
    """Qwen3's shape, one expert taking most tokens: the local count search must get close
    to the bound where min-max replication alone packs far from it."""
    from eplb_operator.workloads import zipf_load

    topology = Topology.from_redundant(128, 16, 16)
    load = zipf_load(4, 128, exponent, seed=40)
    got = views.imbalance(load, rebalance(load, topology), 16)
    bound = views.imbalance_lower_bound(load, topology)
    assert (got <= bound * 1.005).all()
    # Min-max counts packed as well as we can: far off, so the search did the work.
    load64 = load.double().numpy()
    counts = replicate(load64, 144)
    weights = np.take_along_axis(load64 / counts, expand_replicas(counts), axis=1)
    bins = pack(weights, 16)
    heaviest = np.stack(
        [np.bincount(b, weights=w, minlength=16) for w, b in zip(weights, bins, strict=True)]
    ).max(axis=1)
    min_max_only = heaviest / (load64.sum(axis=1) / 16)
    assert (min_max_only > bound.numpy() * 1.01).any()
