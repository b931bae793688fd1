"""Line a new placement up with the previous one so that as few slots as possible change.

Ranks are interchangeable (and, in hierarchical mode, whole nodes are), so any permutation
of a new placement's ranks balances exactly as well.  Pick the permutation that keeps the
most replicas where they already are (an assignment problem, solved exactly with the
Hungarian method), then inside each rank leave every expert that stays in its old slot.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from eplb_operator.placement.topology import Topology

IntArray = npt.NDArray[np.int64]


def align_to_previous(new: IntArray, previous: IntArray, topology: Topology) -> IntArray:
    """``[L, P]``: ``new`` ``[L, P]`` with ranks (and nodes) permuted and slots reordered
    inside each rank to keep the most of ``previous`` ``[L, P]``; loads are unchanged."""
    aligned = np.empty_like(new)
    for layer in range(new.shape[0]):
        aligned[layer] = _align_layer(new[layer], previous[layer], topology)
    return aligned


def _align_layer(new: IntArray, previous: IntArray, topo: Topology) -> IntArray:
    rpn, slots = topo.ranks_per_node, topo.slots_per_rank
    new_ranks = new.reshape(topo.num_ranks, slots)
    old_ranks = previous.reshape(topo.num_ranks, slots)
    new_counts = _counts_per_rank(new_ranks, topo.num_experts)  # [R, E]
    old_counts = _counts_per_rank(old_ranks, topo.num_experts)

    # Nodes first (a node's ranks move together), then ranks inside matched nodes.
    node_new = new_counts.reshape(topo.num_nodes, rpn, -1).sum(axis=1)
    node_old = old_counts.reshape(topo.num_nodes, rpn, -1).sum(axis=1)
    node_target = _best_matching(node_new, node_old)  # new node → old node
    rank_target = np.empty(topo.num_ranks, dtype=np.int64)
    for new_node, old_node in enumerate(node_target):
        new_block = slice(new_node * rpn, (new_node + 1) * rpn)
        old_block = slice(old_node * rpn, (old_node + 1) * rpn)
        local = _best_matching(new_counts[new_block], old_counts[old_block])
        rank_target[new_block] = old_node * rpn + local

    result = np.empty_like(old_ranks)
    for new_rank, old_rank in enumerate(rank_target):
        result[old_rank] = _keep_slots(new_ranks[new_rank], old_ranks[old_rank])
    return result.reshape(-1)


def _counts_per_rank(ranks: IntArray, num_experts: int) -> IntArray:
    counts = np.zeros((ranks.shape[0], num_experts), dtype=np.int64)
    np.add.at(counts, (np.arange(ranks.shape[0])[:, None], ranks), 1)
    return counts


def _best_matching(new_counts: IntArray, old_counts: IntArray) -> IntArray:
    """Index into ``old_counts`` rows for each ``new_counts`` row, maximising shared replicas."""
    # scipy loads here, not at import: `eplb plan` without --previous never needs it.
    from scipy.optimize import linear_sum_assignment

    overlap = np.minimum(new_counts[:, None, :], old_counts[None, :, :]).sum(axis=2)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    target = np.empty(new_counts.shape[0], dtype=np.int64)
    target[rows] = cols
    return target


def _keep_slots(new_experts: IntArray, old_experts: IntArray) -> IntArray:
    """One rank's slots: experts already in an old slot stay there; the rest fill the gaps
    in ascending order."""
    result = np.full_like(old_experts, -1)
    remaining = list(new_experts)
    for slot, expert in enumerate(old_experts):
        if expert in remaining:
            result[slot] = expert
            remaining.remove(expert)
    remaining.sort()
    gaps = np.flatnonzero(result < 0)
    result[gaps] = remaining
    return result
