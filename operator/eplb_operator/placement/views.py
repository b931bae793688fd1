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

from typing import TYPE_CHECKING

import numpy as np

from eplb_core.arrays import ArrayT, FloatArray, IntArray, like, to_numpy
from eplb_core.errors import InvalidInputError
from eplb_core.placements import placement_error, start_up_placement
from eplb_operator.placement.replication import replicate
from eplb_operator.placement.topology import Topology

if TYPE_CHECKING:
    from eplb_core.arrays import Array


def validate_placement(phy2log: Array, topology: Topology) -> None:
    """Raise InvalidInputError unless ``phy2log`` ``[L, P]`` is a usable placement.

    Usable: integer, P slots per layer, ids in ``[0, E)``, every logical expert with at
    least one replica in every layer (the sidecar's published check, so both sides agree).
    """
    rows = to_numpy(phy2log)
    if rows.ndim == 2 and rows.shape[1] != topology.num_slots:
        raise InvalidInputError(
            f"placement has {rows.shape[1]} slots per layer, topology has {topology.num_slots} "
            f"({topology.num_ranks} ranks x {topology.slots_per_rank})"
        )
    error = placement_error(phy2log, topology.num_slots, topology.num_experts)
    if error is not None:
        raise InvalidInputError(error)


def validate_previous(phy2log: Array, topology: Topology) -> None:
    """Raise InvalidInputError unless ``phy2log`` ``[L, P]`` is a usable placement in
    service: as ``validate_placement``, except that ``-1`` marks an unused slot."""
    rows = to_numpy(phy2log)
    if rows.ndim == 2 and rows.dtype.kind in "iu" and (rows == -1).any():
        # Check it with each unused slot holding a copy of a used slot's expert of the same
        # layer: the ids and replica checks then speak only of the used slots.
        if rows.shape[1] == topology.num_slots and (rows == -1).all(axis=1).any():
            layer = int(np.flatnonzero((rows == -1).all(axis=1))[0])
            raise InvalidInputError(f"placement layer {layer} has no used slot")
        if rows.shape[1] == topology.num_slots:
            donor = np.broadcast_to(rows.max(axis=1, keepdims=True), rows.shape)
            phy2log = np.where(rows == -1, donor, rows)
    validate_placement(phy2log, topology)


def validate_load(load: Array, num_experts: int | None = None) -> None:
    """Raise InvalidInputError unless ``load`` ``[L, E]`` is finite and non-negative."""
    values = to_numpy(load)
    if values.ndim != 2:
        raise InvalidInputError(f"load must be [layers, experts], got shape {list(values.shape)}")
    if num_experts is not None and values.shape[1] != num_experts:
        raise InvalidInputError(
            f"load has {values.shape[1]} experts per layer, expected {num_experts}"
        )
    if values.shape[0] == 0:
        raise InvalidInputError("load has no layers")
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvalidInputError("load has NaN or infinite counts")
    if (values < 0).any():
        layer, expert = (int(v) for v in np.argwhere(values < 0)[0])
        raise InvalidInputError(f"load is negative at layer {layer}, expert {expert}")


def identity_placement(num_layers: int, topology: Topology) -> IntArray:
    """``[L, P]``: slot p holds expert ``p mod E`` (what engines start with before any EPLB)."""
    return start_up_placement(num_layers, topology.num_slots, topology.num_experts)


def replica_counts(phy2log: ArrayT, num_experts: int) -> ArrayT:
    """``[L, E]`` int64: replicas of each logical expert, from ``phy2log`` ``[L, P]``."""
    return like(_replica_counts(_ids(phy2log), num_experts), phy2log)


def log2phy(phy2log: ArrayT, num_experts: int) -> ArrayT:
    """``[L, E, X]`` int64: the slots of each expert in ascending order, padded with -1.

    X is the largest replica count of any expert in any layer (SGLang's
    ``logical_to_all_physical_map``; vLLM's ``log2phy``).
    """
    rows = _ids(phy2log)
    num_layers, num_slots = rows.shape
    counts = _replica_counts(rows, num_experts)
    width = max(int(counts.max()) if counts.size else 1, 1)
    result = np.full((num_layers, num_experts, width), -1, dtype=np.int64)
    # Stable sort by expert keeps each expert's slots in ascending order; unused slots
    # (-1) sort first and are dropped.
    order = np.argsort(rows, axis=1, kind="stable")
    sorted_experts = np.take_along_axis(rows, order, axis=1)
    unused = (rows < 0).sum(axis=1, keepdims=True)
    starts = np.cumsum(counts, axis=1) - counts + unused
    used = sorted_experts >= 0
    experts = np.maximum(sorted_experts, 0)
    position = np.arange(num_slots)[None, :] - np.take_along_axis(starts, experts, axis=1)
    layer_index = np.broadcast_to(np.arange(num_layers)[:, None], (num_layers, num_slots))
    result[layer_index[used], experts[used], position[used]] = order[used]
    return like(result, phy2log)


def slot_loads(load: ArrayT, phy2log: Array) -> ArrayT:
    """``[L, P]`` float64: tokens each slot serves; an expert's load split over its replicas."""
    return like(_slot_loads(_floats(load), _ids(phy2log)), load)


def rank_loads(load: ArrayT, phy2log: Array, num_ranks: int) -> ArrayT:
    """``[L, R]`` float64: tokens each rank serves under placement ``phy2log`` ``[L, P]``."""
    per_slot = _slot_loads(_floats(load), _ids(phy2log))
    return like(per_slot.reshape(per_slot.shape[0], num_ranks, -1).sum(axis=2), load)


def rank_imbalance(per_rank: ArrayT) -> ArrayT:
    """``[L]`` float64: max / mean of ``per_rank`` ``[L, R]`` rank loads (1.0 when idle)."""
    return like(_rank_imbalance(_floats(per_rank)), per_rank)


def imbalance(load: ArrayT, phy2log: Array, num_ranks: int) -> ArrayT:
    """``[L]`` float64: max rank load / mean rank load per layer (1.0 perfect, also when idle)."""
    per_slot = _slot_loads(_floats(load), _ids(phy2log))
    per_rank = per_slot.reshape(per_slot.shape[0], num_ranks, -1).sum(axis=2)
    return like(_rank_imbalance(per_rank), load)


def balancedness(load: ArrayT, phy2log: Array, num_ranks: int) -> ArrayT:
    """``[L]`` float64: mean rank load / max rank load (vLLM's metric), ``1 / imbalance``."""
    per_slot = _slot_loads(_floats(load), _ids(phy2log))
    per_rank = per_slot.reshape(per_slot.shape[0], num_ranks, -1).sum(axis=2)
    return like(1.0 / _rank_imbalance(per_rank), load)


def moves(old_phy2log: ArrayT, new_phy2log: Array) -> ArrayT:
    """``[L]`` int64: slots whose logical expert changes (each one is a weight copy)."""
    old, new = to_numpy(old_phy2log), to_numpy(new_phy2log)
    if old.shape != new.shape:
        raise InvalidInputError(
            f"placements differ in shape: {list(old.shape)} vs {list(new.shape)}"
        )
    return like((old != new).sum(axis=1).astype(np.int64), old_phy2log)


def imbalance_lower_bound(load: ArrayT, topology: Topology) -> ArrayT:
    """``[L]`` float64: no placement of ``topology`` does better than this on ``load`` ``[L, E]``.

    max(1, hottest replica after min-max replication / mean rank load): a rank is at least
    as loaded as the mean, and at least as loaded as the heaviest replica it holds.
    """
    load64 = _floats(load)
    counts = replicate(load64, topology.num_slots)
    hottest = (load64 / counts).max(axis=1)
    mean = load64.sum(axis=1) / topology.num_ranks
    bound = hottest / np.maximum(mean, np.finfo(np.float64).tiny)
    return like(np.where(mean > 0, np.maximum(bound, 1.0), 1.0), load)


# Computed with numpy: single-threaded (torch's intra-op threads stall on a busy machine)
# and without importing torch in a one-shot process.
def _ids(phy2log: Array) -> IntArray:
    return np.asarray(to_numpy(phy2log), dtype=np.int64)


def _floats(values: Array) -> FloatArray:
    return np.asarray(to_numpy(values), dtype=np.float64)


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
