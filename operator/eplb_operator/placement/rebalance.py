"""A fresh placement from a load: replicate hot experts, then pack replicas onto ranks.

Hierarchical mode (DeepSeek's, and vLLM's when groups divide evenly over nodes):
  1. pack expert groups onto nodes, ``G / N`` groups per node, balancing node load;
  2. inside each node, give its ``E / N`` experts the node's ``P / N`` slots
     (min-max replication, then a search over counts where packing falls short of the
     bound), so every replica stays on its group's node;
  3. pack the node's replicas onto its ranks, ``S`` per rank.
Global mode is the same with one group and one node: replicas may land anywhere.

Worked example (global): 4 experts with load ``[90, 30, 20, 10]``, 2 ranks × 3 slots.
Min-max replication gives counts ``[3, 1, 1, 1]`` (replicas ``30 30 30 30 20 10``), whose
best packing is 70 / 80, imbalance 1.067.  The count search tries ``[2, 2, 1, 1]``
(replicas ``45 45 15 15 20 10``), which packs as ``{45, 15, 15}`` / ``{45, 20, 10}`` =
75 / 75: imbalance 1.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from eplb_core.arrays import ArrayT, FloatArray, IntArray, like, to_numpy
from eplb_core.errors import InvalidInputError
from eplb_operator.placement import kernels
from eplb_operator.placement.count_search import exhaustive_options
from eplb_operator.placement.packing import members, pack
from eplb_operator.placement.replication import replicate
from eplb_operator.placement.topology import Topology
from eplb_operator.placement.views import validate_load

if TYPE_CHECKING:
    from eplb_core.arrays import Array

Mode = Literal["auto", "hierarchical", "global"]


def resolve_mode(mode: Mode, topology: Topology) -> Literal["hierarchical", "global"]:
    """``auto`` picks hierarchical when groups split evenly over nodes, as vLLM does."""
    if mode == "auto":
        return "hierarchical" if topology.hierarchical_possible else "global"
    if mode == "hierarchical" and not topology.hierarchical_possible:
        raise InvalidInputError(
            f"hierarchical mode needs nodes ({topology.num_nodes}) to divide groups "
            f"({topology.num_groups}) and groups to divide experts ({topology.num_experts}); "
            "use --mode global"
        )
    return mode


def rebalance(load: ArrayT, topology: Topology, mode: Mode = "auto") -> ArrayT:
    """Placement ``phy2log`` ``[L, P]`` int64 for ``load`` ``[L, E]`` (tokens per logical expert),
    a numpy array or a torch tensor as ``load`` is.

    Within each rank, slots hold their experts in ascending id order, so equal input gives
    byte-identical output.
    """
    validate_load(load, topology.num_experts)
    return like(fresh_placement(_floats(load), topology, mode), load)


def fresh_placement(load: FloatArray, topology: Topology, mode: Mode = "auto") -> IntArray:
    """``rebalance`` on numpy arrays, ``load`` ``[L, E]`` already checked."""
    if resolve_mode(mode, topology) == "global":
        topology = Topology(topology.num_experts, topology.num_ranks, topology.slots_per_rank, 1, 1)
    return _hierarchical(load, topology)


def _floats(load: Array) -> FloatArray:
    return np.asarray(to_numpy(load), dtype=np.float64)


def warm_up() -> kernels.Kernels:
    """Load the kernels now, and return them: the ahead-of-time module where one is built
    (``kernels``), else numba's, loaded here from its on-disk cache (or compiled) rather
    than inside the first plan.

    Call before timing a placement, so the one-off load is not counted as computation.
    """
    chosen = kernels.active()
    if chosen.origin == "just-in-time":
        # Every kernel, with the argument types a plan passes (read-only options, as
        # ``exhaustive_options`` gives for any problem): each type is another kernel to load.
        topology = Topology(8, 4, 3, num_nodes=2, num_groups=2)
        _hierarchical(np.arange(16.0).reshape(2, 8), topology)
        replicate(np.ones((1, 2)), 3)
    return chosen


def rebalance_within_nodes(load: FloatArray, previous: IntArray, topology: Topology) -> IntArray:
    """Hierarchical placement ``[L, P]`` keeping each group on its node in ``previous`` ``[L, P]``.

    Every group of ``previous`` must live on one node (check with ``groups_of_node``).
    """
    groups_of_node = groups_of_node_in(previous, topology)
    if groups_of_node is None:
        raise ValueError("previous placement splits a group across nodes")
    return _hierarchical(load, topology, groups_of_node)


def groups_of_node_in(phy2log: np.ndarray, topo: Topology) -> np.ndarray | None:
    """``[L, N, G/N]`` groups of each node in ``phy2log`` ``[L, P]`` (ascending), or None if a
    group has replicas on two nodes or a node does not hold exactly ``G / N`` groups."""
    num_layers = phy2log.shape[0]
    group_size = topo.num_experts // topo.num_groups
    node_of_slot = np.arange(topo.num_slots) // (topo.ranks_per_node * topo.slots_per_rank)
    rows = np.repeat(np.arange(num_layers), topo.num_slots)
    groups = (phy2log // group_size).ravel()
    nodes = np.tile(node_of_slot, num_layers)
    lowest = np.full((num_layers, topo.num_groups), topo.num_nodes, dtype=np.int64)
    node_of_group = np.full((num_layers, topo.num_groups), -1, dtype=np.int64)
    np.minimum.at(lowest, (rows, groups), nodes)
    np.maximum.at(node_of_group, (rows, groups), nodes)
    if (lowest != node_of_group).any():
        return None
    per_node = topo.num_groups // topo.num_nodes
    counts = np.stack([np.bincount(row, minlength=topo.num_nodes) for row in node_of_group])
    if (counts != per_node).any():
        return None
    # Key (node, group) is unique, so any sort is deterministic.
    order = np.argsort(node_of_group * topo.num_groups + np.arange(topo.num_groups), axis=1)
    return order.reshape(num_layers, topo.num_nodes, per_node)


def _hierarchical(
    load: np.ndarray, topo: Topology, groups_of_node: np.ndarray | None = None
) -> np.ndarray:
    num_layers, num_experts = load.shape
    nodes, groups = topo.num_nodes, topo.num_groups
    # 1. Groups onto nodes.
    if groups_of_node is None:
        if nodes == 1:
            groups_of_node = np.broadcast_to(np.arange(groups), (num_layers, 1, groups))
        else:
            group_load = load.reshape(num_layers, groups, num_experts // groups).sum(axis=2)
            groups_of_node = members(pack(group_load, nodes), nodes)  # [L, N, G/N]
    # 2-3. Inside each node: replicate, then pack replicas onto ranks (counts and packing
    # chosen together), one compiled pass over every layer and node.
    slots_per_node = topo.num_slots // nodes
    options = exhaustive_options(num_experts // nodes, slots_per_node)
    phy2log = np.empty((num_layers, topo.num_slots), dtype=np.int64)
    kernels.active().place_layers(
        np.ascontiguousarray(load, dtype=np.float64),
        np.ascontiguousarray(groups_of_node, dtype=np.int64),
        topo.ranks_per_node,
        options,
        phy2log,
    )
    return phy2log
