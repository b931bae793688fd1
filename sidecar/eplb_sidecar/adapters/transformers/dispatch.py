"""Which physical slot serves each (token, choice) of a layer: pure functions on tensors.

A layer's router picks ``k`` logical experts per token; the pairs are taken in (token,
choice) order, ``N = T·k`` of them.  The ``n``-th pair of logical expert ``e`` falls in
*block* ``n // block``, and block ``b`` goes to replica ``b mod replicas(e)`` (replicas in
slot order): round robin by position, as vLLM does with a block of one pair
(``(token·k + choice) mod replicas``).  SGLang instead picks per source rank a fixed
replica (``--ep-dispatch-algorithm static``: same GPU, then same node, else a seeded draw)
or a random one per pair (``dynamic``).

Why blocks: which pairs form a block, in which order, depends only on the router's choices,
never on the placement.  Each block is computed as one matmul of its own rows, so a pair's
output has the same bits whichever replica computes it, and a rebalance cannot change what
the model computes.  A larger block makes larger matmuls (faster on a GPU) and spreads an
expert's load over its replicas in coarser steps.
"""

from __future__ import annotations

import torch


def assign_slots(
    experts: torch.Tensor, log2phy: torch.Tensor, counts: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global slot ``[N]`` of each pair, and its position ``[N]`` among its expert's pairs.

    Args:
        experts: ``[N]`` int64 logical expert of each pair, in (token, choice) order.
        log2phy: ``[E, W]`` slots of each expert, -1 padded
            (:func:`eplb_sidecar.engine.routing.replica_table`).
        counts: ``[E]`` replicas of each expert (≥ 1).
        block: pairs per block (≥ 1).
    """
    num_experts = counts.numel()
    order = torch.argsort(experts, stable=True)
    per_expert = torch.bincount(experts, minlength=num_experts)
    starts = torch.cumsum(per_expert, 0) - per_expert
    position = torch.empty_like(experts)
    position[order] = torch.arange(experts.numel(), device=experts.device) - starts[experts[order]]
    replica = (position // block) % counts[experts]
    return log2phy[experts, replica], position


def local_blocks(
    experts: torch.Tensor,
    slots: torch.Tensor,
    position: torch.Tensor,
    first_slot: int,
    slots_per_rank: int,
    block: int,
) -> list[tuple[int, torch.Tensor]]:
    """The blocks this rank computes: ``(local slot, pair indices [n])``, rows in pair order.

    Args:
        experts, slots, position: ``[N]`` each, from :func:`assign_slots`.
        first_slot: this rank's first global slot; it owns ``slots_per_rank`` from there.
    """
    local = slots - first_slot
    mine = ((local >= 0) & (local < slots_per_rank)).nonzero().squeeze(1)
    if mine.numel() == 0:
        return []
    blocks_per_expert = experts.numel() // block + 1
    key = experts[mine] * blocks_per_expert + position[mine] // block
    order = torch.argsort(key, stable=True)  # stable: pair order within a block
    mine, key = mine[order], key[order]
    cuts = ((key[1:] != key[:-1]).nonzero().squeeze(1) + 1).tolist()
    starts = [0, *cuts]
    slot_of_block = local[mine[starts]].tolist()
    return list(zip(slot_of_block, torch.tensor_split(mine, cuts), strict=True))
