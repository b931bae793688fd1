"""Everything derived from a placement: replica counts, log2phy, per-rank load, imbalance, moves.

A placement of a model is ``phy2log`` ``[layers, P]`` (int64): the logical expert held by
each physical slot, slots rank-major.  Nothing else is stored; this module derives the rest,
and it is the only place that does.

Load model (the one vLLM, SGLang and DeepSeek use): the tokens routed to a logical expert
are split evenly over its replicas.

A placement in service may mark unused slots with ``-1`` (vLLM's ``compute_logical_maps``
accepts them): they hold no expert, carry no load and appear in no view.  Placements this
policy writes fill every slot.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from eplb_core.errors import InvalidInputError
from eplb_core.placements import placement_error, start_up_placement
from eplb_operator.placement.replication import replicate
from eplb_operator.placement.topology import Topology

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def validate_placement(phy2log: torch.Tensor, topology: Topology) -> None:
    """Raise InvalidInputError unless ``phy2log`` ``[L, P]`` is a usable placement.

    Usable: integer, P slots per layer, ids in ``[0, E)``, every logical expert with at
    least one replica in every layer (the sidecar's published check, so both sides agree).
    """
    if phy2log.dim() == 2 and phy2log.shape[1] != topology.num_slots:
        raise InvalidInputError(
            f"placement has {phy2log.shape[1]} slots per layer, topology has {topology.num_slots} "
            f"({topology.num_ranks} ranks x {topology.slots_per_rank})"
        )
    error = placement_error(phy2log, topology.num_slots, topology.num_experts)
    if error is not None:
        raise InvalidInputError(error)


def validate_previous(phy2log: torch.Tensor, topology: Topology) -> None:
    """Raise InvalidInputError unless ``phy2log`` ``[L, P]`` is a usable placement in
    service: as ``validate_placement``, except that ``-1`` marks an unused slot."""
    if phy2log.dim() == 2 and not phy2log.dtype.is_floating_point and (phy2log == -1).any():
        # Check it with each unused slot holding a copy of a used slot's expert of the same
        # layer: the ids and replica checks then speak only of the used slots.
        if phy2log.shape[1] == topology.num_slots and (phy2log == -1).all(dim=1).any():
            layer = int((phy2log == -1).all(dim=1).nonzero()[0])
            raise InvalidInputError(f"placement layer {layer} has no used slot")
        if phy2log.shape[1] == topology.num_slots:
            donor = phy2log.max(dim=1, keepdim=True).values.expand_as(phy2log)
            phy2log = torch.where(phy2log == -1, donor, phy2log)
    validate_placement(phy2log, topology)


def validate_load(load: torch.Tensor, num_experts: int | None = None) -> None:
    """Raise InvalidInputError unless ``load`` ``[L, E]`` is finite and non-negative."""
    if load.dim() != 2:
        raise InvalidInputError(f"load must be [layers, experts], got shape {list(load.shape)}")
    if num_experts is not None and load.shape[1] != num_experts:
        raise InvalidInputError(
            f"load has {load.shape[1]} experts per layer, expected {num_experts}"
        )
    if load.shape[0] == 0:
        raise InvalidInputError("load has no layers")
    values = _floats(load)
    if not np.isfinite(values).all():
        raise InvalidInputError("load has NaN or infinite counts")
    if (values < 0).any():
        layer, expert = (int(v) for v in np.argwhere(values < 0)[0])
        raise InvalidInputError(f"load is negative at layer {layer}, expert {expert}")


def identity_placement(num_layers: int, topology: Topology) -> torch.Tensor:
    """``[L, P]``: slot p holds expert ``p mod E`` (what engines start with before any EPLB)."""
    return start_up_placement(num_layers, topology.num_slots, topology.num_experts)


def replica_counts(phy2log: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[L, E]`` int64: replicas of each logical expert, from ``phy2log`` ``[L, P]``."""
    return torch.from_numpy(_replica_counts(_array(phy2log).astype(np.int64), num_experts))


def log2phy(phy2log: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[L, E, X]`` int64: the slots of each expert in ascending order, padded with -1.

    X is the largest replica count of any expert in any layer (SGLang's
    ``logical_to_all_physical_map``; vLLM's ``log2phy``).
    """
    num_layers, num_slots = phy2log.shape
    counts = replica_counts(phy2log, num_experts)
    width = max(int(counts.max()) if counts.numel() else 1, 1)
    result = torch.full((num_layers, num_experts, width), -1, dtype=torch.int64)
    # Stable sort by expert keeps each expert's slots in ascending order; unused slots
    # (-1) sort first and are dropped.
    order = torch.sort(phy2log.long(), dim=1, stable=True).indices
    sorted_experts = torch.gather(phy2log.long(), 1, order)
    unused = (phy2log < 0).sum(dim=1, keepdim=True)
    starts = torch.cumsum(counts, dim=1) - counts + unused
    used = sorted_experts >= 0
    experts = sorted_experts.clamp(min=0)
    position = torch.arange(num_slots).unsqueeze(0) - torch.gather(starts, 1, experts)
    layer_index = torch.arange(num_layers).unsqueeze(1).expand(-1, num_slots)
    result[layer_index[used], experts[used], position[used]] = order[used]
    return result


def slot_loads(load: torch.Tensor, phy2log: torch.Tensor) -> torch.Tensor:
    """``[L, P]`` float64: tokens each slot serves; an expert's load split over its replicas."""
    return torch.from_numpy(_slot_loads(_floats(load), _array(phy2log).astype(np.int64)))


def rank_loads(load: torch.Tensor, phy2log: torch.Tensor, num_ranks: int) -> torch.Tensor:
    """``[L, R]`` float64: tokens each rank serves under placement ``phy2log`` ``[L, P]``."""
    per_slot = _slot_loads(_floats(load), _array(phy2log).astype(np.int64))
    return torch.from_numpy(per_slot.reshape(per_slot.shape[0], num_ranks, -1).sum(axis=2))


def rank_imbalance(per_rank: torch.Tensor) -> torch.Tensor:
    """``[L]`` float64: max / mean of ``per_rank`` ``[L, R]`` rank loads (1.0 when idle)."""
    return torch.from_numpy(_rank_imbalance(_floats(per_rank)))


def imbalance(load: torch.Tensor, phy2log: torch.Tensor, num_ranks: int) -> torch.Tensor:
    """``[L]`` float64: max rank load / mean rank load per layer (1.0 perfect, also when idle)."""
    per_slot = _slot_loads(_floats(load), _array(phy2log).astype(np.int64))
    per_rank = per_slot.reshape(per_slot.shape[0], num_ranks, -1).sum(axis=2)
    return torch.from_numpy(_rank_imbalance(per_rank))


def balancedness(load: torch.Tensor, phy2log: torch.Tensor, num_ranks: int) -> torch.Tensor:
    """``[L]`` float64: mean rank load / max rank load (vLLM's metric), ``1 / imbalance``."""
    return 1.0 / imbalance(load, phy2log, num_ranks)


def moves(old_phy2log: torch.Tensor, new_phy2log: torch.Tensor) -> torch.Tensor:
    """``[L]`` int64: slots whose logical expert changes (each one is a weight copy)."""
    if old_phy2log.shape != new_phy2log.shape:
        raise InvalidInputError(
            f"placements differ in shape: {list(old_phy2log.shape)} vs {list(new_phy2log.shape)}"
        )
    return torch.from_numpy((_array(old_phy2log) != _array(new_phy2log)).sum(axis=1))


def imbalance_lower_bound(load: torch.Tensor, topology: Topology) -> torch.Tensor:
    """``[L]`` float64: no placement of ``topology`` does better than this on ``load`` ``[L, E]``.

    max(1, hottest replica after min-max replication / mean rank load): a rank is at least
    as loaded as the mean, and at least as loaded as the heaviest replica it holds.
    """
    load64 = _floats(load)
    counts = replicate(load64, topology.num_slots)
    hottest = (load64 / counts).max(axis=1)
    mean = load64.sum(axis=1) / topology.num_ranks
    bound = hottest / np.maximum(mean, np.finfo(np.float64).tiny)
    return torch.from_numpy(np.where(mean > 0, np.maximum(bound, 1.0), 1.0))


# Computed with numpy: single-threaded (torch's intra-op threads stall on a busy machine)
# and without torch's first-call costs in a one-shot process.
def _array(tensor: torch.Tensor) -> npt.NDArray[Any]:
    return tensor.detach().cpu().numpy()


def _floats(tensor: torch.Tensor) -> FloatArray:
    return np.asarray(_array(tensor), dtype=np.float64)


def _replica_counts(phy2log: IntArray, num_experts: int) -> IntArray:
    num_layers = phy2log.shape[0]
    used = phy2log >= 0
    cells = (np.arange(num_layers)[:, None] * num_experts + phy2log)[used]
    counts: IntArray = np.bincount(cells, minlength=num_layers * num_experts).reshape(
        num_layers, num_experts
    )
    return counts


def _slot_loads(load: FloatArray, phy2log: IntArray) -> FloatArray:
    per_replica = load / np.maximum(_replica_counts(phy2log, load.shape[1]), 1)
    per_slot = np.take_along_axis(per_replica, np.maximum(phy2log, 0), axis=1)
    return np.where(phy2log >= 0, per_slot, 0.0)


def _rank_imbalance(per_rank: FloatArray) -> FloatArray:
    mean = per_rank.mean(axis=1)
    ratio = per_rank.max(axis=1) / np.maximum(mean, np.finfo(np.float64).tiny)
    return np.where(mean > 0, ratio, 1.0)
