"""The undo plan of a commit: from wherever a commit stopped, the old contents come back."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_sidecar.moves import FromFetched, FromSaved, FromSlot, commit_order, undo_order

from .test_moves import placement_pairs


@settings(max_examples=300, deadline=None)
@given(placement_pairs(), st.data())
def test_restores_bring_back_the_old_slots_after_any_prefix_of_the_writes(
    case: tuple[torch.Tensor, torch.Tensor, int, int], data: st.DataObject
) -> None:
    old, new, ranks, slots = case
    rank = data.draw(st.integers(0, ranks - 1))
    writes, saves = commit_order(old, new, rank, slots)
    restores, extra = undo_order(old, new, rank, slots, saves)
    first = rank * slots
    before = old[first : first + slots].tolist()
    saved = {slot: before[slot] for slot in saves + extra}  # taken at prepare
    stopped = data.draw(st.integers(0, len(writes)))  # writes that ran before the failure
    contents = list(before)
    for write in writes[:stopped]:
        source = write.source
        if isinstance(source, FromSlot):
            contents[write.slot] = contents[source.slot]
        elif isinstance(source, FromSaved):
            contents[write.slot] = saved[source.slot]
        else:
            assert isinstance(source, FromFetched)
            contents[write.slot] = source.expert
    untouched = {w.slot for w in writes}
    for restore in data.draw(st.permutations(restores)):  # any order works
        source = restore.source
        if isinstance(source, FromSlot):
            assert source.slot not in untouched, "a restore reads a slot the commit writes"
            contents[restore.slot] = contents[source.slot]
        else:
            assert isinstance(source, FromSaved)
            contents[restore.slot] = saved[source.slot]
    assert contents == before
    assert sorted(r.slot for r in restores) == sorted(untouched)
    assert not set(extra) & set(saves)


def test_only_experts_that_leave_the_rank_cost_an_extra_copy() -> None:
    # Rank 0 of 1 × 4 slots: [0 1 2 3] → [1 0 2 4]: slots 0 and 1 swap (a cycle, one save),
    # slot 3's expert 3 leaves the rank (one extra save), slot 2 stays.
    old, new = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 2, 4])
    _, saves = commit_order(old, new, 0, 4)
    restores, extra = undo_order(old, new, 0, 4, saves)
    assert saves == [0] and extra == [1, 3]
    assert {r.slot: r.source for r in restores} == {
        0: FromSaved(0),
        1: FromSaved(1),
        3: FromSaved(3),
    }
