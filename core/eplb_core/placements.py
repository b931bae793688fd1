"""Placements both sides agree on: the start-up placement, and the one validity check
(shapes, expert ids, a replica for every expert).

Used by the sidecar before it changes anything and by the operator's placement engine.
"""

from __future__ import annotations

import torch


def placement_error(
    phy2log: torch.Tensor,
    num_slots: int,
    num_experts: int,
    layer_ids: list[int] | None = None,
) -> str | None:
    """Why ``phy2log`` ``[L, P]`` is not a usable placement, or None when it is.

    Usable: integer ids, ``P == num_slots`` per layer, ids in ``[0, E)``, every logical expert
    with at least one replica in every layer.  ``layer_ids`` ``[L]`` names the rows in the
    message (default: row index).
    """
    if phy2log.dim() != 2:
        return f"placement must be [layers, slots], got shape {list(phy2log.shape)}"
    if phy2log.dtype.is_floating_point or phy2log.dtype == torch.bool:
        return f"placement must hold integer expert ids, got {phy2log.dtype}"
    if phy2log.shape[1] != num_slots:
        return f"placement has {phy2log.shape[1]} slots per layer, expected {num_slots}"
    if phy2log.numel() == 0:
        return None
    low, high = int(phy2log.min()), int(phy2log.max())
    if low < 0 or high >= num_experts:
        bad = low if low < 0 else high
        return f"placement names expert {bad}, outside [0, {num_experts})"
    counts = torch.zeros(phy2log.shape[0], num_experts, dtype=torch.int64)
    counts.scatter_add_(1, phy2log.long(), torch.ones_like(phy2log, dtype=torch.int64))
    missing = (counts == 0).nonzero()
    if missing.numel():
        row, expert = (int(v) for v in missing[0])
        layer = layer_ids[row] if layer_ids is not None else row
        return (
            f"layer {layer}: logical expert {expert} has no replica "
            f"({missing.shape[0]} expert(s) without a replica in all)"
        )
    return None


def start_up_placement(num_layers: int, num_slots: int, num_experts: int) -> torch.Tensor:
    """``[L, P]``: slot p holds expert ``p mod E`` (what engines load before any EPLB)."""
    row = torch.arange(num_slots, dtype=torch.int64) % num_experts
    return row.unsqueeze(0).repeat(num_layers, 1)
