"""The module that takes the place of a MoE block's ``experts``: slots, counters, exchange.

The block's own ``forward`` still runs: it calls its router (``self.gate``, the model's own
code: softmax top-2, normalized top-k, grouped top-k with correction bias) and then
``self.experts(hidden, experts, weights)`` — this module.  For each (token, choice) it
picks the serving slot (:mod:`.dispatch`), counts the pairs of this rank's slots into the
table's counters, computes the blocks of this rank's slots with the weights in the table,
sums the ranks' outputs (:mod:`.exchange`) and weighs the ``k`` choices of a token in a
fixed order.  DeepSeek-V3's shared expert is added by the block, outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional

from eplb_sidecar.adapters.transformers.dispatch import assign_slots, local_blocks
from eplb_sidecar.adapters.transformers.exchange import EngineGroup
from eplb_sidecar.contract.table import ExpertTable


@dataclass
class LayerRoutes:
    """One layer's placement as the kernels use it (on the engine's device)."""

    log2phy: torch.Tensor  # [E, W] slots of each expert, -1 padded
    counts: torch.Tensor  # [E] replicas of each expert


@dataclass
class MoeStep:
    """What every layer's module reads during one forward; the engine sets it per step."""

    table: ExpertTable
    group: EngineGroup
    block: int
    routes: list[LayerRoutes] = field(default_factory=list)
    count: bool = False  # workload steps count; probes do not


class ExpertParallelExperts(nn.Module):
    """Replaces ``block.experts`` of MoE layer ``layer`` (row ``layer`` of the table)."""

    def __init__(
        self, layer: int, step: MoeStep, act_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        super().__init__()
        self.layer = layer
        self.step = step
        self.act_fn = act_fn  # the model's own activation (SiLU for all three)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """``hidden_states [T, H]``, the router's ``top_k_index [T, k]`` and
        ``top_k_weights [T, k]`` → the routed experts' output ``[T, H]``."""
        step, layer = self.step, self.layer
        layout = step.table.layout
        T, k = top_k_index.shape
        experts = top_k_index.reshape(-1).long()
        routes = step.routes[layer]
        slots, position = assign_slots(experts, routes.log2phy, routes.counts, step.block)
        if step.count:
            self._count(slots)
        outputs = hidden_states.new_zeros(T * k, hidden_states.shape[-1])
        token_of_pair = torch.arange(T, device=hidden_states.device).repeat_interleave(k)
        w13, w2 = step.table.weights["w13"][layer], step.table.weights["w2"][layer]
        blocks = local_blocks(
            experts, slots, position, layout.first_slot, layout.slots_per_rank, step.block
        )
        for slot, pairs in blocks:
            rows = hidden_states[token_of_pair[pairs]]
            gate, up = functional.linear(rows, w13[slot]).chunk(2, dim=-1)
            outputs[pairs] = functional.linear(self.act_fn(gate) * up, w2[slot])
        step.group.sum_(outputs)
        per_choice = outputs.view(T, k, -1).float()
        weights = top_k_weights.float()
        combined = per_choice[:, 0] * weights[:, 0, None]
        for choice in range(1, k):  # a fixed order: the sum's bits depend on nothing else
            combined += per_choice[:, choice] * weights[:, choice, None]
        return combined.to(hidden_states.dtype)

    def _count(self, slots: torch.Tensor) -> None:
        """Add this step's pairs per local slot to ``counters`` and per rank to
        ``group_load`` (every rank sees every pair's slot)."""
        layout = self.step.table.layout
        S = layout.slots_per_rank
        local = slots - layout.first_slot
        mine = local[(local >= 0) & (local < S)]
        table = self.step.table
        table.counters[self.layer] += torch.bincount(mine, minlength=S).cpu()
        table.group_load[self.layer] += torch.bincount(slots // S, minlength=layout.ranks).cpu()
