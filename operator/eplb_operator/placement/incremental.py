"""Improve an existing placement a few slots at a time instead of replacing it.

When the load drifts a little, the previous placement is usually almost as good as a fresh
one; a handful of changed slots closes the gap, where a fresh placement (even aligned)
rewrites most of the layer.  This local search walks from the previous placement towards
a target rank load, one step at a time, taking the step that removes the most excess load
(load above the target, summed over ranks) per changed slot.

Steps:
- *swap* two slots on different ranks (2 changed slots, replica counts unchanged);
- *retarget* a slot from an expert with a spare replica to another expert (1 changed slot):
  the donor's other replicas get heavier, the receiver's lighter.
In hierarchical mode both stay inside a node, and a slot only takes experts of groups that
already live on its node, so every group keeps all its replicas on one node.

The search records every intermediate placement, so a move budget can stop it anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from eplb_operator.placement.topology import Topology

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# A step must remove at least this fraction of the mean rank load of excess, so float noise
# cannot keep the search walking.
MIN_STEP_GAIN = 1e-9
# Steps are drawn from the slots of the hottest few ranks, and a slot given up on them goes
# to one of the few experts with the lightest would-be replicas: the candidates that can
# help most, at a cost independent of the model's size.
HOT_RANKS = 3
LIGHT_EXPERTS = 16
# A hot expert's new replica comes from a spare slot on one of the coldest few ranks.
COLD_RANKS = 4


@dataclass(frozen=True)
class Waypoint:
    """One placement on the search path: ``phy2log`` ``[P]``, slots changed from the start,
    and its imbalance."""

    phy2log: IntArray
    moves: int
    imbalance: float


def search_path(
    load: FloatArray,
    previous: IntArray,
    topology: Topology,
    target_imbalance: float,
    hierarchical: bool,
    max_moves: int,
    in_service: IntArray | None = None,
) -> list[Waypoint]:
    """Waypoints from ``previous`` ``[P]`` towards ``target_imbalance`` for ``load`` ``[E]``.

    The first waypoint is ``previous`` itself; the path ends when the target is met, no step
    helps, or the next step would exceed ``max_moves`` changed slots.  Changed slots count
    against ``in_service`` ``[P]`` (default ``previous``): the placement actually served,
    of which ``previous`` is a completion (its unused slots filled).
    """
    served = previous if in_service is None else in_service
    search = _Search(load, previous, topology, hierarchical, served)
    path = [Waypoint(previous.copy(), int((previous != served).sum()), search.imbalance())]
    if search.mean <= 0 or (hierarchical and not search.groups_on_one_node()):
        return path
    target = target_imbalance * search.mean
    while path[-1].imbalance > target_imbalance:
        step = search.best_step(target)
        if step is None:
            break
        changed = search.apply(step)
        moves = int((changed != served).sum())
        if moves > max_moves:
            break
        path.append(Waypoint(changed.copy(), moves, search.imbalance()))
    return path


@dataclass(frozen=True)
class _Step:
    score: float
    slot: int
    other_slot: int  # -1 for a retarget
    expert: int  # the expert a retargeted slot takes; -1 for a swap


class _Search:
    def __init__(
        self,
        load: FloatArray,
        previous: IntArray,
        topo: Topology,
        hierarchical: bool,
        served: IntArray,
    ):
        self.load = load.astype(np.float64)
        self.start = served  # what a changed slot is counted against
        self.phy2log = previous.copy()
        self.topo = topo
        self.hierarchical = hierarchical
        self.rank_of_slot = np.arange(topo.num_slots) // topo.slots_per_rank
        self.node_of_slot = self.rank_of_slot // topo.ranks_per_node
        self.mean = float(self.load.sum()) / topo.num_ranks

    # -- state ---------------------------------------------------------------------------
    def counts(self) -> IntArray:
        return np.bincount(self.phy2log, minlength=self.topo.num_experts)

    def rank_loads(self) -> FloatArray:
        counts = self.counts()
        slot_loads = self.load[self.phy2log] / counts[self.phy2log]
        per_rank: FloatArray = slot_loads.reshape(self.topo.num_ranks, -1).sum(axis=1)
        return per_rank

    def imbalance(self) -> float:
        return float(self.rank_loads().max() / self.mean) if self.mean > 0 else 1.0

    def node_of_expert(self) -> IntArray:
        nodes = np.full(self.topo.num_experts, -1, dtype=np.int64)
        nodes[self.phy2log] = self.node_of_slot
        return nodes

    def groups_on_one_node(self) -> bool:
        group_size = self.topo.num_experts // self.topo.num_groups
        group_of_slot = self.phy2log // group_size
        for group in range(self.topo.num_groups):
            if np.unique(self.node_of_slot[group_of_slot == group]).size > 1:
                return False
        return True

    # -- steps ---------------------------------------------------------------------------
    def best_step(self, target: float) -> _Step | None:
        loads = self.rank_loads()
        excess = np.clip(loads - target, 0.0, None)
        if excess.sum() <= 0:
            return None
        hottest = np.argsort(-loads, kind="stable")[:HOT_RANKS]
        hottest = hottest[excess[hottest] > 0]
        hot_slots = np.flatnonzero(np.isin(self.rank_of_slot, hottest))
        candidates = [
            self._best_swap(loads, target, hot_slots),
            self._best_retarget(loads, target, hot_slots),
        ]
        found = [c for c in candidates if c is not None]
        if not found:
            return None
        # Highest score wins; on a tie, the swap (listed first) is kept by max's stability.
        return max(found, key=lambda step: step.score)

    def apply(self, step: _Step) -> IntArray:
        if step.other_slot >= 0:
            a, b = self.phy2log[step.slot], self.phy2log[step.other_slot]
            self.phy2log[step.slot], self.phy2log[step.other_slot] = b, a
        else:
            self.phy2log[step.slot] = step.expert
        return self.phy2log

    def _moved(self, slots: IntArray, experts: IntArray) -> IntArray:
        """1 where putting ``experts`` into ``slots`` differs from the starting placement."""
        moved: IntArray = (experts != self.start[slots]).astype(np.int64)
        return moved

    def _best_swap(self, loads: FloatArray, target: float, hot_slots: IntArray) -> _Step | None:
        if hot_slots.size == 0:
            return None
        counts = self.counts()
        slot_loads = self.load[self.phy2log] / counts[self.phy2log]
        every = np.arange(self.topo.num_slots)
        i, j = hot_slots[:, None], every[None, :]
        transfer = slot_loads[i] - slot_loads[j]  # load leaving slot i's rank
        rank_i, rank_j = self.rank_of_slot[i], self.rank_of_slot[j]
        valid = (rank_i != rank_j) & (self.phy2log[i] != self.phy2log[j]) & (transfer > 0)
        if self.hierarchical:
            valid &= self.node_of_slot[i] == self.node_of_slot[j]
        before = _excess(loads[rank_i], target) + _excess(loads[rank_j], target)
        after = _excess(loads[rank_i] - transfer, target) + _excess(
            loads[rank_j] + transfer, target
        )
        gain = np.where(valid, before - after, -np.inf)
        cost = (
            self._moved(i, self.phy2log[j])
            + self._moved(j, self.phy2log[i])
            - self._moved(i, self.phy2log[i])
            - self._moved(j, self.phy2log[j])
        )
        picked = self._pick(gain, cost)
        if picked is None:
            return None
        score, (row, col) = picked
        return _Step(score, int(hot_slots[row]), int(col), -1)

    def _best_retarget(self, loads: FloatArray, target: float, hot_slots: IntArray) -> _Step | None:
        topo = self.topo
        counts = self.counts()
        donors = np.flatnonzero(counts[self.phy2log] >= 2)
        if donors.size == 0:
            return None
        hot_experts = np.unique(self.phy2log[hot_slots])
        would_be = self.load / (counts + 1)
        light_experts = np.argsort(would_be, kind="stable")[:LIGHT_EXPERTS]
        receivers = np.union1d(light_experts, hot_experts)
        # Family 1: a hot slot gives up its expert for a light or hot one.  Family 2: a
        # spare slot on a cold rank takes a hot expert, lightening its replicas on hot ranks.
        slots_1 = np.intersect1d(donors, hot_slots)
        coldest = np.argsort(loads, kind="stable")[:COLD_RANKS]
        slots_2 = donors[np.isin(self.rank_of_slot[donors], coldest)]
        pairs = [
            (np.repeat(slots_1, receivers.size), np.tile(receivers, slots_1.size)),
            (np.repeat(slots_2, hot_experts.size), np.tile(hot_experts, slots_2.size)),
        ]
        slots = np.concatenate([p[0] for p in pairs])
        experts = np.concatenate([p[1] for p in pairs])
        donor_experts = self.phy2log[slots]
        keep = experts != donor_experts
        if self.hierarchical:
            keep &= self.node_of_expert()[experts] == self.node_of_slot[slots]
        slots, experts, donor_experts = slots[keep], experts[keep], donor_experts[keep]
        if slots.size == 0:
            return None

        per_rank = np.zeros((topo.num_experts, topo.num_ranks), dtype=np.float64)
        np.add.at(per_rank, (self.phy2log, self.rank_of_slot), 1.0)
        rank_hit = np.eye(topo.num_ranks)[self.rank_of_slot[slots]]  # [C, R]
        w_a, c_a = self.load[donor_experts, None], counts[donor_experts, None]
        w_b, c_b = self.load[experts, None], counts[experts, None]
        new_loads = (
            loads[None, :]
            - per_rank[donor_experts] * w_a / c_a
            - per_rank[experts] * w_b / c_b
            + (per_rank[donor_experts] - rank_hit) * w_a / (c_a - 1)
            + (per_rank[experts] + rank_hit) * w_b / (c_b + 1)
        )
        gain = _excess(loads, target).sum() - _excess(new_loads, target).sum(axis=1)
        cost = self._moved(slots, experts) - self._moved(slots, donor_experts)
        picked = self._pick(gain, cost)
        if picked is None:
            return None
        score, (k,) = picked
        return _Step(score, int(slots[k]), -1, int(experts[k]))

    def _pick(self, gain: FloatArray, cost: IntArray) -> tuple[float, tuple[int, ...]] | None:
        """Best gain per changed slot, and where it is; None if nothing gains."""
        # Steps that undo earlier changes cost nothing or less; never divide by < 1/4.
        score = np.where(gain > MIN_STEP_GAIN * self.mean, gain / np.maximum(cost, 0.25), -np.inf)
        flat = int(np.argmax(score))
        if not np.isfinite(score.flat[flat]):
            return None
        index = tuple(int(v) for v in np.unravel_index(flat, score.shape))
        return float(score.flat[flat]), index


def _excess(loads: FloatArray, target: float) -> FloatArray:
    return np.clip(loads - target, 0.0, None)
