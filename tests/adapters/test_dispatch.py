"""The adapter's dispatch: which slot serves each (token, choice) pair (pure functions)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from eplb_sidecar.adapters.transformers.dispatch import assign_slots, local_blocks
from eplb_sidecar.engine.routing import replica_table


@st.composite
def layers(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(phy2log [P], experts [N], ranks, block): a valid placement and a router's choices."""
    experts = draw(st.integers(2, 12))
    ranks = draw(st.integers(1, 4))
    slots = draw(st.integers(-(-experts // ranks), experts))
    seed = draw(st.integers(0, 2**31))
    generator = torch.Generator().manual_seed(seed)
    extra = torch.randint(experts, (ranks * slots - experts,), generator=generator)
    row = torch.cat([torch.arange(experts), extra])
    phy2log = row[torch.randperm(row.numel(), generator=generator)]
    pairs = draw(st.integers(1, 300))
    choices = torch.randint(experts, (pairs,), generator=generator)
    return phy2log, choices, ranks, draw(st.integers(1, 9))


def blocks_of(
    phy2log: torch.Tensor, choices: torch.Tensor, ranks: int, block: int
) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
    """Every rank's blocks: (rank, global slot, pair indices)."""
    experts = int(phy2log.max()) + 1
    log2phy, counts = replica_table(phy2log, experts)
    slots, position = assign_slots(choices, log2phy, counts, block)
    per_rank = phy2log.numel() // ranks
    return slots, [
        (rank, rank * per_rank + slot, pairs)
        for rank in range(ranks)
        for slot, pairs in local_blocks(choices, slots, position, rank * per_rank, per_rank, block)
    ]


@given(layers())
def test_every_pair_is_computed_once_by_a_replica_of_its_expert(
    case: tuple[torch.Tensor, torch.Tensor, int, int],
) -> None:
    phy2log, choices, ranks, block = case
    slots, blocks = blocks_of(phy2log, choices, ranks, block)
    assert torch.equal(phy2log[slots], choices)
    computed = torch.zeros_like(choices)
    for _, slot, pairs in blocks:
        assert bool((slots[pairs] == slot).all())
        computed[pairs] += 1
    assert bool((computed == 1).all())


@given(layers(), st.integers(0, 2**31))
def test_blocks_hold_the_same_pairs_in_the_same_order_under_any_placement(
    case: tuple[torch.Tensor, torch.Tensor, int, int], seed: int
) -> None:
    """What makes outputs placement-invariant: a block's rows are fixed by the router."""
    phy2log, choices, ranks, block = case
    generator = torch.Generator().manual_seed(seed)
    shuffled = phy2log[torch.randperm(phy2log.numel(), generator=generator)]
    identity = torch.arange(int(phy2log.max()) + 1)  # one slot per expert, one rank

    def contents(placement: torch.Tensor, group: int) -> list[list[int]]:
        _, found = blocks_of(placement, choices, group, block)
        return sorted(pairs.tolist() for _, _, pairs in found)

    assert contents(phy2log, ranks) == contents(shuffled, ranks) == contents(identity, 1)


@given(layers())
def test_an_experts_pairs_spread_over_its_replicas_within_a_block(
    case: tuple[torch.Tensor, torch.Tensor, int, int],
) -> None:
    phy2log, choices, ranks, block = case
    slots, _ = blocks_of(phy2log, choices, ranks, block)
    load = torch.bincount(slots, minlength=phy2log.numel())
    for expert in range(int(phy2log.max()) + 1):
        replicas = (phy2log == expert).nonzero().squeeze(1)
        loads = load[replicas]
        assert int(loads.max() - loads.min()) <= block
        assert int(loads.sum()) == int((choices == expert).sum())


def test_one_pair_blocks_are_vllms_round_robin_by_position() -> None:
    """vLLM: replica ``(token·k + choice) mod replicas``; with one expert chosen by every
    pair, position among the expert's pairs is the flat position."""
    phy2log = torch.tensor([0, 1, 0, 0])
    log2phy, counts = replica_table(phy2log, 2)
    choices = torch.zeros(7, dtype=torch.int64)
    slots, _ = assign_slots(choices, log2phy, counts, block=1)
    assert slots.tolist() == [0, 2, 3, 0, 2, 3, 0]
