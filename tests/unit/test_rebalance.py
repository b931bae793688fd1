import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_core.errors import InvalidInputError
from eplb_operator.placement import Topology, rebalance, views
from eplb_operator.workloads import zipf_load


def test_worked_example_from_the_docstring() -> None:
    load = torch.tensor([[90.0, 30.0, 20.0, 10.0]])
    phy2log = rebalance(load, Topology(4, 2, 3))
    # Min-max replication ([3, 1, 1, 1]) packs no better than 80 / 75; the count search
    # finds [2, 2, 1, 1], which splits evenly.
    assert views.replica_counts(phy2log, 4).tolist() == [[2, 2, 1, 1]]
    assert views.imbalance(load, phy2log, 2).item() == pytest.approx(1.0)


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, Topology]:
    nodes = draw(st.sampled_from([1, 2, 4]))
    ranks = nodes * draw(st.integers(1, 4))
    groups = nodes * draw(st.sampled_from([1, 2]))
    experts = groups * draw(st.integers(1, 6))
    slots = -(-experts // ranks) + draw(st.integers(0, 2))
    layers = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["zipf", "zeros", "one-hot", "uniform"]))
    if kind == "zipf":
        load = rng.pareto(1.0, size=(layers, experts)) * 100
    elif kind == "zeros":
        load = np.zeros((layers, experts))
    elif kind == "one-hot":
        load = np.zeros((layers, experts))
        load[:, rng.integers(experts)] = 1000
    else:
        load = np.full((layers, experts), 7.0)
    return torch.from_numpy(np.round(load)), Topology(experts, ranks, slots, nodes, groups)


@settings(max_examples=80, deadline=None)
@given(problems(), st.sampled_from(["auto", "hierarchical", "global"]))
def test_placement_properties(problem: tuple[torch.Tensor, Topology], mode: str) -> None:
    load, topology = problem
    phy2log = rebalance(load, topology, mode)  # type: ignore[arg-type]
    num_layers = load.shape[0]
    assert phy2log.shape == (num_layers, topology.num_slots) and phy2log.dtype == torch.int64
    # Every logical expert keeps >= 1 replica, every id is valid, every rank holds S slots
    # (by shape), and replica counts agree with the slots.
    views.validate_placement(phy2log, topology)
    counts = views.replica_counts(phy2log, topology.num_experts)
    assert (counts.sum(dim=1) == topology.num_slots).all()
    table = views.log2phy(phy2log, topology.num_experts)
    assert ((table >= 0).sum(dim=2) == counts).all()
    # Never better than the lower bound (a correctness check of both).
    bound = views.imbalance_lower_bound(load, topology)
    assert (views.imbalance(load, phy2log, topology.num_ranks) >= bound - 1e-9).all()
    # Hierarchical: each group, with all its replicas, on one node.
    if mode == "hierarchical" or (mode == "auto" and topology.hierarchical_possible):
        group_of_slot = phy2log // (topology.num_experts // topology.num_groups)
        node_of_slot = torch.arange(topology.num_slots) // (
            topology.ranks_per_node * topology.slots_per_rank
        )
        for layer in range(num_layers):
            for group in range(topology.num_groups):
                assert node_of_slot[group_of_slot[layer] == group].unique().numel() == 1
    # Deterministic.
    assert torch.equal(rebalance(load.clone(), topology, mode), phy2log)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "mode"),
    [
        ((58, 256, 32, 32, 4, 8), "global"),
        ((48, 128, 16, 16, 2, 1), "global"),
        ((32, 8, 4, 4, 1, 1), "global"),
    ],
)
def test_global_mode_is_within_one_percent_of_the_bound(shape: tuple[int, ...], mode: str) -> None:
    layers, experts, ranks, redundant, nodes, groups = shape
    topology = Topology.from_redundant(experts, ranks, redundant, nodes, groups)
    load = zipf_load(layers, experts, exponent=0.8, seed=3)
    phy2log = rebalance(load, topology, mode)  # type: ignore[arg-type]
    got = views.imbalance(load, phy2log, ranks).mean().item()
    bound = views.imbalance_lower_bound(load, topology).mean().item()
    assert got <= bound * 1.01


def test_hierarchical_mode_needs_divisible_groups() -> None:
    with pytest.raises(InvalidInputError, match="use --mode global"):
        rebalance(torch.ones(1, 8), Topology(8, 4, 3, num_nodes=4, num_groups=2), "hierarchical")


def test_load_of_wrong_width_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="expected 8"):
        rebalance(torch.ones(2, 6), Topology(8, 4, 3))
