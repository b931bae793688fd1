import pytest
import torch

from eplb_core.errors import InvalidInputError
from eplb_operator.placement import Topology, views


def test_worked_example_loads_and_imbalance() -> None:
    # 4 experts, 2 ranks x 3 slots: expert 0 on three slots, experts 1-3 once.
    load = torch.tensor([[90.0, 30.0, 20.0, 10.0]])
    phy2log = torch.tensor([[0, 0, 3, 0, 1, 2]])
    assert views.replica_counts(phy2log, 4).tolist() == [[3, 1, 1, 1]]
    assert views.rank_loads(load, phy2log, 2).tolist() == [[70.0, 80.0]]
    assert views.imbalance(load, phy2log, 2).item() == pytest.approx(80 / 75)
    assert views.balancedness(load, phy2log, 2).item() == pytest.approx(75 / 80)


def test_log2phy_lists_each_experts_slots() -> None:
    phy2log = torch.tensor([[0, 0, 3, 0, 1, 2], [1, 2, 3, 0, 1, 1]])
    table = views.log2phy(phy2log, 4)
    assert table[0].tolist() == [[0, 1, 3], [4, -1, -1], [5, -1, -1], [2, -1, -1]]
    assert table[1].tolist() == [[3, -1, -1], [0, 4, 5], [1, -1, -1], [2, -1, -1]]
    # Inverse: every listed slot holds the expert it is listed under.
    for layer in range(2):
        for expert in range(4):
            for slot in table[layer, expert]:
                if slot >= 0:
                    assert phy2log[layer, slot] == expert


def test_moves_count_changed_slots() -> None:
    old = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    new = torch.tensor([[0, 1, 3, 2], [0, 1, 2, 3]])
    assert views.moves(old, new).tolist() == [2, 0]


def test_idle_layer_is_balanced() -> None:
    load = torch.zeros(1, 4)
    assert views.imbalance(load, torch.tensor([[0, 1, 2, 3]]), 2).item() == 1.0


def test_lower_bound_is_hottest_replica_or_mean() -> None:
    topology = Topology(4, 2, 3)
    load = torch.tensor([[90.0, 30.0, 20.0, 10.0], [300.0, 0.0, 0.0, 0.0]])
    bound = views.imbalance_lower_bound(load, topology)
    # Layer 0: replicas of 30 at most, mean rank 75 -> bound 1.  Layer 1: 300 over 3 replicas
    # is 100 per replica against a mean of 150 -> 1.
    assert bound.tolist() == [1.0, 1.0]
    skewed = torch.tensor([[1000.0, 1.0, 1.0, 1.0]])
    # 1000 over 3 replicas = 333.3 per replica; mean rank load 501.5.
    assert views.imbalance_lower_bound(skewed, topology).item() == pytest.approx(1.0)
    tight = Topology(4, 4, 1)
    assert views.imbalance_lower_bound(skewed, tight).item() == pytest.approx(1000 / (1003 / 4))


@pytest.mark.parametrize(
    ("phy2log", "message"),
    [
        (torch.tensor([[0, 1, 2, 2, 2, 2]]), "expert 3 has no replica"),
        (torch.tensor([[0, 1, 2, 3, 4, 0]]), "names expert 4, outside"),
        (torch.tensor([[0, 1, 2, -1, 3, 0]]), "names expert -1, outside"),
        (torch.tensor([[0, 1, 2, 3]]), "4 slots per layer, topology has 6"),
        (torch.tensor([[0.0, 1, 2, 3, 0, 0]]), "integer expert ids"),
        (torch.tensor([0, 1, 2, 3, 0, 0]), "must be \\[layers, slots\\]"),
    ],
)
def test_validate_placement_rejects(phy2log: torch.Tensor, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        views.validate_placement(phy2log, Topology(4, 2, 3))


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (torch.tensor([[1.0, -1.0, 0.0, 0.0]]), "negative at layer 0, expert 1"),
        (torch.tensor([[1.0, float("nan"), 0.0, 0.0]]), "NaN or infinite"),
        (torch.tensor([[1.0, 2.0, 3.0]]), "3 experts per layer, expected 4"),
        (torch.zeros(0, 4), "no layers"),
    ],
)
def test_validate_load_rejects(load: torch.Tensor, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        views.validate_load(load, 4)
