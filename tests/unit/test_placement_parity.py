"""Edge cases that vLLM's own algorithm tests (tests/distributed/test_eplb_algo.py) pin down
for its policy, checked against ours: the same inputs must be accepted and give placements
with the same guarantees."""

import pytest
import torch

from eplb_core.errors import InvalidInputError
from eplb_operator.placement import LayerReason, PlanOptions, Topology, plan, rebalance, views


def test_groups_that_do_not_divide_over_nodes_fall_back_to_global() -> None:
    # vLLM: 6 experts, 8 replicas, 3 groups, 2 nodes, 4 GPUs → global load balancing.
    load = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
    topology = Topology.from_redundant(6, 4, 2, num_nodes=2, num_groups=3)
    phy2log = rebalance(load, topology)
    views.validate_placement(phy2log, topology)
    assert views.replica_counts(phy2log, 6).sum().item() == 8
    assert torch.equal(phy2log, rebalance(load, topology, "global"))
    with pytest.raises(InvalidInputError, match="nodes \\(2\\) to divide groups \\(3\\)"):
        rebalance(load, topology, "hierarchical")


def test_groups_that_do_not_divide_experts_fall_back_to_global() -> None:
    # vLLM's parameter-validation case: 4 experts, 8 replicas, 3 groups, 2 nodes, 4 GPUs.
    load = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    topology = Topology.from_redundant(4, 4, 4, num_nodes=2, num_groups=3)
    phy2log = rebalance(load, topology)
    views.validate_placement(phy2log, topology)
    assert phy2log.shape == (1, 8)
    # Same fall-back for the migration-aware planner.
    result = plan(load, topology, previous=phy2log)
    assert result.moves == 0


def test_equal_weights_and_no_spare_slots_give_one_replica_each() -> None:
    load = torch.full((1, 8), 50.0)
    phy2log = rebalance(load, Topology(8, 4, 2, num_nodes=2, num_groups=2))
    assert views.replica_counts(phy2log, 8).tolist() == [[1] * 8]


def test_extreme_weight_imbalance_replicates_the_hot_expert() -> None:
    load = torch.tensor([[1000.0, 1, 1, 1, 1, 1, 1, 1]])
    topology = Topology.from_redundant(8, 4, 4, num_nodes=2, num_groups=2)
    phy2log = rebalance(load, topology)
    counts = views.replica_counts(phy2log, 8)[0]
    assert counts[0] > counts[1]
    # Hierarchical: expert 0's group (experts 0-3) lives on one node of two ranks; two
    # replicas of 500, one per rank, balance that node exactly (three would not).
    assert counts[0].item() == 2
    assert views.rank_loads(load, phy2log, 4)[0].max().item() == pytest.approx(1003 / 2)


def test_unused_slots_in_a_previous_placement_are_read_and_filled() -> None:
    # vLLM's compute_logical_maps case: 2 layers, 6 slots (2 ranks x 3), 4 experts,
    # slots 2 and 5 (layer 0) and 1 and 5 (layer 1) unused.
    previous = torch.tensor([[0, 1, -1, 2, 3, -1], [3, -1, 2, 1, 0, -1]])
    topology = Topology(4, 2, 3)
    views.validate_previous(previous, topology)
    assert views.replica_counts(previous, 4).tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    table = views.log2phy(previous, 4)
    assert table.shape == (2, 4, 1)
    assert table[0, :, 0].tolist() == [0, 1, 3, 4]
    assert table[1, :, 0].tolist() == [4, 3, 2, 0]
    # An unused slot carries no load.
    load = torch.full((2, 4), 10.0)
    assert views.rank_loads(load, previous, 2).tolist() == [[20.0, 20.0], [20.0, 20.0]]

    result = plan(load, topology, previous=previous)
    views.validate_placement(result.placement, topology)  # every slot used
    used = previous >= 0
    for layer in result.layers:
        # Balanced already: only the unused slots change, each filled without unbalancing.
        assert layer.reason == LayerReason.UNUSED_SLOTS_FILLED and layer.updated
        assert layer.moves == 2
        assert layer.imbalance_after == pytest.approx(1.0)
    assert torch.equal(result.placement[used], previous[used])
    assert result.moves == int(views.moves(previous, result.placement).sum()) == 4


def test_filling_unused_slots_comes_out_of_the_move_budget_first() -> None:
    previous = torch.tensor([[0, 1, -1, 2, 3, -1]])
    load = torch.tensor([[80.0, 10.0, 10.0, 10.0]])  # previous is far from balanced
    result = plan(load, Topology(4, 2, 3), previous=previous, options=PlanOptions(max_moves=3))
    assert result.moves <= 3
    assert (result.placement >= 0).all()
    views.validate_placement(result.placement, Topology(4, 2, 3))


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        (torch.tensor([[-1, -1, -1, -1, -1, -1]]), "layer 0 has no used slot"),
        (torch.tensor([[0, 1, -1, 2, 2, -1]]), "expert 3 has no replica"),
        (torch.tensor([[0, 1, -2, 2, 3, -1]]), "outside"),
    ],
)
def test_bad_unused_slots_are_rejected(previous: torch.Tensor, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        plan(torch.ones(1, 4), Topology(4, 2, 3), previous=previous)
