"""Checks of a reference engine's table against the model it serves (DESIGN.md §5).

The reference model's weights derive from (seed, layer, expert) alone, so every slot can be
compared bit for bit with the logical expert the routing table names.
"""

from __future__ import annotations

import torch

from eplb_core.placements import placement_error
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.weights import expert_weights


def slot_weight_errors(table: ExpertTable, seed: int) -> list[str]:
    """One line per local slot whose weights are not exactly its logical expert's."""
    layout = table.layout
    errors = []
    for layer in range(layout.layers):
        for slot in range(layout.slots_per_rank):
            expert = int(table.routing[layer, layout.first_slot + slot])
            want = expert_weights(layout.weights, seed, layer, expert, layout.device)
            for name, value in want.items():
                if not torch.equal(table.weights[name][layer, slot].cpu(), value.cpu()):
                    errors.append(
                        f"rank {layout.rank} layer {layer} slot {slot}: {name} is not expert "
                        f"{expert}"
                    )
    return errors


def group_errors(tables: list[ExpertTable], seed: int) -> list[str]:
    """Why the tables of one EP group are not a consistent, correct placement (empty: they are).

    Consistent: every pod's routing table ``[L, P]`` is the same, every logical expert has a
    replica in every layer, and every slot holds exactly its expert's weights.
    """
    if not tables:
        return ["no tables"]
    first = tables[0]
    errors = [
        f"rank {table.layout.rank} serves another placement than rank {first.layout.rank}"
        for table in tables[1:]
        if not torch.equal(table.routing, first.routing)
    ]
    layout = first.layout
    problem = placement_error(first.routing.clone(), layout.num_slots, layout.experts)
    if problem is not None:
        errors.append(problem)
    for table in tables:
        errors += slot_weight_errors(table, seed)
    return errors
