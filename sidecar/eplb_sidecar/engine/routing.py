"""Token routing of the reference engine: a top-k gate with skewed popularity, then replicas.

Pure functions on tensors.
"""

from __future__ import annotations

import torch


def popularity_bias(experts: int, skew: float, seed: int, layer: int, shift: int) -> torch.Tensor:
    """``[E]`` float32 log-popularity: Zipf(``skew``) over an order drawn per (layer, shift)."""
    generator = torch.Generator().manual_seed((seed * 131 + layer) * 1009 + shift)
    order = torch.randperm(experts, generator=generator)
    ranks = torch.empty(experts)
    ranks[order] = torch.arange(1, experts + 1, dtype=torch.float32)
    weights = ranks.pow(-skew)
    return (weights / weights.sum()).log()


def gate(
    x: torch.Tensor, router: torch.Tensor, bias: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing of tokens ``x`` ``[T, H]``.

    Args:
        router: ``[H, E]`` gate projection.
        bias: ``[E]`` log-popularity added to the logits (the workload's skew).

    Returns:
        experts ``[T, k]`` int64 and their gate weights ``[T, k]`` float32 (softmax over k).
    """
    logits = x.float() @ router + bias
    values, experts = logits.topk(top_k, dim=1)
    return experts, values.softmax(dim=1)


def replica_table(phy2log: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``log2phy`` ``[E, max_replicas]`` (slots ascending, -1 padded) and counts ``[E]``."""
    counts = torch.bincount(phy2log, minlength=num_experts)
    order = torch.argsort(phy2log, stable=True)
    width = int(counts.max())
    log2phy = torch.full((num_experts, width), -1, dtype=torch.int64)
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(phy2log.numel()) - starts[phy2log[order]]
    log2phy[phy2log[order], column] = order
    return log2phy, counts


def choose_slots(
    experts: torch.Tensor, token_ids: torch.Tensor, log2phy: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``[T, k]`` global slot of each (token, choice): replicas taken round-robin by token id.

    Args:
        experts: ``[T, k]`` logical experts.
        token_ids: ``[T]`` int64, a stable id per token (spreads an expert's tokens evenly).
    """
    choice = torch.arange(experts.shape[1], device=experts.device)
    replica = (token_ids.unsqueeze(1) + choice) % counts[experts]
    return log2phy[experts, replica]
