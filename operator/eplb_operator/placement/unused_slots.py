"""Fill the unused slots (``-1``) of a placement in service before planning from it.

vLLM lets a placement leave physical slots unused; every placement this policy writes
fills them, since engines and the sidecar serve full placements.  Each unused slot takes
the expert that leaves the heaviest rank lightest (a new replica lightens every rank that
holds the expert and loads the slot's rank); ties go to the lower expert id.  In
hierarchical mode only experts whose group already lives on the slot's node qualify, so
every group stays on one node.  Filling a slot is a move like any other (weights are
loaded into it); the planner then improves on the filled placement as on any other.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from eplb_operator.placement.topology import Topology

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

UNUSED = -1


def fill_unused_slots(
    previous: IntArray, load: FloatArray, topology: Topology, hierarchical: bool
) -> IntArray:
    """``[L, P]``: ``previous`` ``[L, P]`` with every ``-1`` slot given an expert, for
    ``load`` ``[L, E]``.  Layers without unused slots are returned as they were."""
    filled = previous.copy()
    num_experts, num_ranks = topology.num_experts, topology.num_ranks
    rank_of_slot = np.arange(topology.num_slots) // topology.slots_per_rank
    slots_per_node = topology.ranks_per_node * topology.slots_per_rank
    group_of_expert = np.arange(num_experts) // (num_experts // topology.num_groups)
    for layer in np.flatnonzero((previous == UNUSED).any(axis=1)):
        row = filled[layer]
        for slot in np.flatnonzero(row == UNUSED):
            used = row >= 0
            per_rank = np.zeros((num_experts, num_ranks))  # [E, R] replicas on each rank
            np.add.at(per_rank, (row[used], rank_of_slot[used]), 1.0)
            counts = per_rank.sum(axis=1)
            share = np.divide(load[layer], counts, out=np.zeros(num_experts), where=counts > 0)
            rank_load = per_rank.T @ share  # [R]
            new_share = load[layer] / (counts + 1)
            # [E, R]: rank loads with one more replica of each expert, on the slot's rank.
            after = rank_load[None, :] + per_rank * (new_share - share)[:, None]
            after[:, rank_of_slot[slot]] += new_share
            worst = after.max(axis=1)
            if hierarchical:
                node = slot // slots_per_node
                on_node = row[node * slots_per_node : (node + 1) * slots_per_node]
                groups = np.unique(group_of_expert[on_node[on_node >= 0]])
                if groups.size:
                    worst = np.where(np.isin(group_of_expert, groups), worst, np.inf)
            row[slot] = int(np.argmin(worst))  # first minimum: the lower id on ties
    return filled
