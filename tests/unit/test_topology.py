import pytest

from eplb_core.errors import InvalidInputError
from eplb_operator.placement import Topology


def test_from_redundant_spreads_slots_evenly() -> None:
    topology = Topology.from_redundant(256, 32, 32, num_nodes=4, num_groups=8)
    assert (topology.num_slots, topology.slots_per_rank, topology.ranks_per_node) == (288, 9, 8)
    assert topology.num_redundant == 32
    assert topology.hierarchical_possible


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((256, 32, 30), "must be a multiple of ranks"),
        ((256, 32, -1), "redundant experts must be >= 0"),
        ((256, 0, 32), "ranks must be >= 1"),
    ],
)
def test_from_redundant_rejects(args: tuple[int, int, int], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Topology.from_redundant(*args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts": 256, "num_ranks": 32, "slots_per_rank": 7}, "cannot hold 256 experts"),
        (
            {"num_experts": 256, "num_ranks": 32, "slots_per_rank": 9, "num_nodes": 3},
            "nodes \\(3\\) must divide ranks",
        ),
        ({"num_experts": 0, "num_ranks": 1, "slots_per_rank": 1}, "experts must be >= 1"),
    ],
)
def test_topology_rejects(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Topology(**kwargs)


def test_hierarchical_needs_groups_divisible_by_nodes() -> None:
    assert not Topology(256, 32, 9, num_nodes=4, num_groups=2).hierarchical_possible


def test_groups_that_do_not_divide_experts_leave_global_placement() -> None:
    topology = Topology(256, 32, 9, num_nodes=1, num_groups=7)  # accepted, as vLLM does
    assert not topology.hierarchical_possible
