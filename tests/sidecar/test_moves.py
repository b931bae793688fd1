"""The move plan: who sends what, and an in-place write order that never reads stale slots."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_sidecar.moves import (
    CHECKPOINT,
    FromFetched,
    FromSaved,
    FromSlot,
    changed_slots,
    commit_order,
    plan_fetches,
)


@st.composite
def placement_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(old ``[P]``, new ``[P]``, ranks, slots per rank); both placements replicate every expert."""
    ranks = draw(st.integers(1, 4))
    slots = draw(st.integers(1, 5))
    experts = draw(st.integers(1, ranks * slots))

    def one() -> torch.Tensor:
        extra = draw(
            st.lists(
                st.integers(0, experts - 1),
                min_size=ranks * slots - experts,
                max_size=ranks * slots - experts,
            )
        )
        row = list(range(experts)) + extra
        order = draw(st.permutations(range(ranks * slots)))
        return torch.tensor([row[i] for i in order], dtype=torch.int64)

    return one(), one(), ranks, slots


@settings(max_examples=300, deadline=None)
@given(placement_pairs())
def test_commit_order_writes_each_changed_slot_once_and_reaches_the_new_placement(
    case: tuple[torch.Tensor, torch.Tensor, int, int],
) -> None:
    old, new, ranks, slots = case
    for rank in range(ranks):
        writes, saves = commit_order(old, new, rank, slots)
        first = rank * slots
        contents = old[first : first + slots].tolist()
        target = new[first : first + slots].tolist()
        saved = {slot: contents[slot] for slot in saves}  # taken at prepare, before any write
        for write in writes:
            source = write.source
            if isinstance(source, FromSlot):
                value = contents[source.slot]
            elif isinstance(source, FromSaved):
                value = saved[source.slot]
            else:
                assert isinstance(source, FromFetched)
                assert source.expert not in old[first : first + slots].tolist()
                value = source.expert
            assert value == target[write.slot], "a write read a slot after it was overwritten"
            contents[write.slot] = value
        assert contents == target
        written = sorted(write.slot for write in writes)
        assert written == changed_slots(old, new, rank, slots)
        assert set(saves) <= set(written)


@settings(max_examples=300, deadline=None)
@given(placement_pairs(), st.data())
def test_plan_fetches_sends_every_missing_expert_once_from_a_holder(
    case: tuple[torch.Tensor, torch.Tensor, int, int], data: st.DataObject
) -> None:
    old, new, ranks, slots = case
    participants = sorted(data.draw(st.sets(st.integers(0, ranks - 1), min_size=1)))
    fetches = plan_fetches({7: (old, new)}, slots, participants)
    wanted = set()
    for rank in participants:
        first = rank * slots
        have = set(old[first : first + slots].tolist())
        for slot in changed_slots(old, new, rank, slots):
            if int(new[first + slot]) not in have:
                wanted.add((rank, int(new[first + slot])))
    assert sorted((f.dst_rank, f.expert) for f in fetches) == sorted(wanted)
    for fetch in fetches:
        assert fetch.layer == 7
        holders = [
            r
            for r in participants
            if r != fetch.dst_rank and fetch.expert in old[r * slots : (r + 1) * slots].tolist()
        ]
        if not holders:
            assert fetch.src_rank == fetch.src_slot == CHECKPOINT
            continue
        assert fetch.src_rank in holders
        assert int(old[fetch.src_rank * slots + fetch.src_slot]) == fetch.expert


def test_plan_fetches_spreads_sends_over_holders() -> None:
    # Expert 0 is held by ranks 0 and 1; ranks 2 and 3 both need it: one send each.
    old = torch.tensor([0, 1, 0, 2, 3, 4, 5, 6])
    new = torch.tensor([0, 1, 0, 2, 0, 4, 0, 6])  # validity is the caller's job, not the plan's
    fetches = plan_fetches({0: (old, new)}, 2, [0, 1, 2, 3])
    sources = sorted(f.src_rank for f in fetches if f.expert == 0)
    assert sources == [0, 1]
