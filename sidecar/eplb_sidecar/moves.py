"""What a placement change means for each rank: fetches between ranks and in-place copy order.

Pure functions, no I/O.  Every rank computes the same :func:`plan_fetches` from the same
old and new ``phy2log``, so senders and receivers agree without talking.

Worked example (2 ranks × 2 slots, E = 3; old ``[0 1 | 2 0]`` → new ``[1 2 | 0 1]``):
rank 0's slot 0 needs expert 1, which its own slot 1 holds: a local copy, which must happen
before slot 1 is overwritten with expert 2; expert 2 it lacks, so rank 1 sends it (from its
slot 0).  Symmetrically rank 1 copies expert 0 from its slot 1 into slot 0 first, and
receives expert 1 from rank 0.  :func:`commit_order` orders such copies and breaks cycles
(slot a ← b ← a) by saving one slot's old contents at prepare time; :func:`undo_order` says
how to put every changed slot back should a commit fail part-way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHECKPOINT = -1
"""``Fetch.src_rank`` of an expert read from the model's checkpoint files."""


@dataclass(frozen=True, order=True)
class Fetch:
    """Expert ``expert`` of ``layer`` that ``dst_rank`` lacks, from ``src_rank``'s local
    slot ``src_slot`` (or from the checkpoint: ``src_rank == src_slot == CHECKPOINT``)."""

    layer: int
    dst_rank: int
    expert: int
    src_rank: int
    src_slot: int


@dataclass(frozen=True)
class FromSlot:
    """Copy from a local slot as it is at commit time (it is unchanged or not yet written)."""

    slot: int


@dataclass(frozen=True)
class FromSaved:
    """Copy from a local slot's old contents, saved into staging at prepare (breaks a cycle)."""

    slot: int


@dataclass(frozen=True)
class FromFetched:
    """Copy from an expert fetched at prepare (from a peer or the checkpoint)."""

    expert: int


Source = FromSlot | FromSaved | FromFetched


@dataclass(frozen=True)
class Write:
    slot: int
    source: Source


def changed_slots(
    old: torch.Tensor, new: torch.Tensor, rank: int, slots_per_rank: int
) -> list[int]:
    """Local slots of ``rank`` whose expert changes; ``old``/``new`` are ``[P]``."""
    first = rank * slots_per_rank
    mine = slice(first, first + slots_per_rank)
    return (old[mine] != new[mine]).nonzero().flatten().tolist()


def plan_fetches(
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]],
    slots_per_rank: int,
    participants: list[int],
) -> list[Fetch]:
    """Every expert some participant lacks, with the rank that sends it.

    Args:
        layers: layer → (old ``[P]``, new ``[P]``) ``phy2log`` of the whole group.
        participants: ranks taking part in peer transfers; only they fetch or send (a rank
            outside them fetches nothing here; one inside with no participating holder of
            an expert reads it from the checkpoint).

    Senders are chosen to spread the sending: the participating holder with the fewest
    sends so far, then the lowest rank; its lowest local slot holding the expert.
    """
    sends = dict.fromkeys(participants, 0)
    fetches: list[Fetch] = []
    for layer in sorted(layers):
        # Python lists: every rank runs this for the whole group on each prepare, and
        # indexing a tensor element by element costs a microsecond or more per slot.
        old, new = (row.tolist() for row in layers[layer])
        holders: dict[int, dict[int, int]] = {}  # expert → rank → lowest local slot
        for slot in range(len(old) - 1, -1, -1):
            rank = slot // slots_per_rank
            if rank in sends:
                holders.setdefault(old[slot], {})[rank] = slot % slots_per_rank
        for rank in participants:
            first = rank * slots_per_rank
            had, gets = old[first : first + slots_per_rank], new[first : first + slots_per_rank]
            changed = {expert for before, expert in zip(had, gets, strict=True) if before != expert}
            wanted = sorted(changed - set(had))
            for expert in wanted:
                candidates = [r for r in holders.get(expert, {}) if r != rank]
                if not candidates:
                    fetches.append(Fetch(layer, rank, expert, CHECKPOINT, CHECKPOINT))
                    continue
                source = min(candidates, key=lambda r: (sends[r], r))
                sends[source] += 1
                fetches.append(Fetch(layer, rank, expert, source, holders[expert][source]))
    return fetches


def commit_order(
    old: torch.Tensor, new: torch.Tensor, rank: int, slots_per_rank: int
) -> tuple[list[Write], list[int]]:
    """The in-place writes of one layer on ``rank``, in an order that never reads a slot
    after it was overwritten, plus the slots to save at prepare to break copy cycles.

    ``old``/``new`` are ``[P]``.  Each changed slot is written exactly once, so the commit
    copies exactly as many experts as change (cycles cost one extra copy, at prepare).
    """
    first = rank * slots_per_rank
    old_local = old[first : first + slots_per_rank].tolist()
    new_local = new[first : first + slots_per_rank].tolist()
    changed = changed_slots(old, new, rank, slots_per_rank)
    stable = {s for s in range(slots_per_rank) if s not in changed}
    sources: dict[int, Source] = {}
    for slot in changed:
        expert = new_local[slot]
        holders = [s for s in range(slots_per_rank) if old_local[s] == expert]
        if not holders:
            sources[slot] = FromFetched(expert)
            continue
        unchanging = [s for s in holders if s in stable]
        sources[slot] = FromSlot(unchanging[0] if unchanging else holders[0])

    def readers_of(slot: int) -> int:
        return sum(
            1
            for dst in pending
            if isinstance(sources[dst], FromSlot) and sources[dst] == FromSlot(slot)
        )

    pending = set(changed)
    order: list[Write] = []
    saved: list[int] = []
    while pending:
        ready = sorted(slot for slot in pending if readers_of(slot) == 0)
        if not ready:  # every pending slot is still read by another: a cycle
            victim = min(pending)
            saved.append(victim)
            for dst in pending:
                if sources[dst] == FromSlot(victim):
                    sources[dst] = FromSaved(victim)
            continue
        for slot in ready:
            order.append(Write(slot, sources[slot]))
            pending.discard(slot)
    return order, saved


def undo_order(
    old: torch.Tensor, new: torch.Tensor, rank: int, slots_per_rank: int, saved: list[int]
) -> tuple[list[Write], list[int]]:
    """How to restore the old contents of every slot :func:`commit_order` writes, from any
    point of the commit, plus the extra slots to save at prepare for it.

    ``old``/``new`` are ``[P]``; ``saved`` are the slots commit_order already saves.  Every
    source is one the commit never writes: an unchanged slot holding the same expert, or a
    copy saved at prepare.  So the restores work in any order, whichever writes ran.  A
    changed slot whose expert has neither (it leaves this rank) is saved at prepare: that
    copy is the price of an all-or-nothing commit, paid outside the engine's stall.
    """
    first = rank * slots_per_rank
    old_local = old[first : first + slots_per_rank].tolist()
    changed = changed_slots(old, new, rank, slots_per_rank)
    stable = {old_local[s]: s for s in range(slots_per_rank) if s not in changed}
    copies = {old_local[s]: s for s in saved}
    restores: list[Write] = []
    extra: list[int] = []
    for slot in changed:
        expert = old_local[slot]
        if expert in stable:
            restores.append(Write(slot, FromSlot(stable[expert])))
            continue
        if expert not in copies:
            copies[expert] = slot
            extra.append(slot)
        restores.append(Write(slot, FromSaved(copies[expert])))
    return restores, extra
