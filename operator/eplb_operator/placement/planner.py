"""Decide, per layer, whether and how to change a placement: the policy's front door.

Given a load window and (optionally) the placement in service, a plan:
1. computes a fresh placement (``rebalance``) — the best balance on offer;
2. gates each layer: unchanged load (similarity ≥ threshold), already close enough to the
   fresh balance (within ``slack``), or too little gain (< ``min_gain``) keep their placement;
3. for the rest, chooses between the aligned fresh placement and the shortest prefix of an
   incremental search that reaches the fresh balance + ``slack``, whichever changes fewer
   slots;
4. spends ``max_moves`` on the layers with the largest gain first; a layer that does not
   fit whole takes the best prefix of its incremental path that does.
Every layer's outcome is reported with its reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic

import numpy as np

from eplb_core.arrays import ArrayT, FloatArray, IntArray, like, to_numpy
from eplb_core.errors import InvalidInputError
from eplb_operator.placement import views
from eplb_operator.placement.alignment import align_to_previous
from eplb_operator.placement.gate import load_similarity
from eplb_operator.placement.incremental import Waypoint, search_path
from eplb_operator.placement.rebalance import (
    Mode,
    fresh_placement,
    groups_of_node_in,
    rebalance_within_nodes,
    resolve_mode,
    warm_up,
)
from eplb_operator.placement.topology import Topology
from eplb_operator.placement.unused_slots import fill_unused_slots


class LayerReason(str, Enum):
    """Why a layer got, or did not get, a new placement."""

    INITIAL = "initial"  # no placement in service: the fresh placement is used
    UPDATED = "updated"
    BUDGET_LIMITED = "budget-limited"  # updated, but only as far as the move budget allowed
    LOAD_UNCHANGED = "load-unchanged"
    ALREADY_BALANCED = "already-balanced"
    GAIN_TOO_SMALL = "gain-too-small"
    BUDGET_EXHAUSTED = "budget-exhausted"
    # kept, except that its unused slots (-1 in the placement in service) were filled
    UNUSED_SLOTS_FILLED = "unused-slots-filled"


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of a plan; the defaults suit an online rebalance."""

    mode: Mode = "auto"
    max_moves: int | None = None  # changed slots over all layers; None: unlimited
    # A migration-aware placement may be this much worse (in imbalance) than a fresh one;
    # None: ``auto_slack`` of the topology.
    slack: float | None = None
    similarity_threshold: float | None = None  # gate on load similarity; None: off
    min_gain: float = 0.0  # predicted imbalance reduction a layer must offer

    def slack_for(self, topology: Topology) -> float:
        return auto_slack(topology) if self.slack is None else self.slack


# Slack of models with many slots per layer.
BASE_SLACK = 0.01
# Below about 60 slots per layer a single changed slot is too coarse a step to chase a 1%
# gain: Mixtral's 12 slots make each an eighth of the layer's weights.  The slack grows as
# this / slots (Mixtral: 0.05), measured in benchmarks/placement.py.
SLACK_SLOTS = 0.6


def auto_slack(topology: Topology) -> float:
    """The default slack: ``max(BASE_SLACK, SLACK_SLOTS / P)``."""
    return max(BASE_SLACK, SLACK_SLOTS / topology.num_slots)


@dataclass(frozen=True)
class LayerPlan:
    layer: int
    reason: LayerReason
    imbalance_before: float
    imbalance_after: float
    imbalance_fresh: float  # a fresh placement's imbalance, moves regardless
    lower_bound: float
    moves: int
    similarity: float | None

    @property
    def updated(self) -> bool:
        return self.reason in (
            LayerReason.INITIAL,
            LayerReason.UPDATED,
            LayerReason.BUDGET_LIMITED,
            LayerReason.UNUSED_SLOTS_FILLED,
        )


@dataclass(frozen=True)
class Plan(Generic[ArrayT]):
    """A plan; its arrays are numpy arrays or torch tensors, as the load given to ``plan``."""

    placement: ArrayT  # [L, P] int64
    layers: list[LayerPlan] = field(default_factory=list)
    compute_seconds: float = 0.0
    load: ArrayT | None = None  # [L, E] the plan was made for
    previous: ArrayT | None = None  # [L, P] it replaces (identity when there was none)

    @property
    def moves(self) -> int:
        return sum(layer.moves for layer in self.layers)

    @property
    def imbalance_before(self) -> float:
        return float(np.mean([layer.imbalance_before for layer in self.layers]))

    @property
    def imbalance_after(self) -> float:
        return float(np.mean([layer.imbalance_after for layer in self.layers]))


@dataclass
class _Choice:
    placement: IntArray
    moves: int
    imbalance: float
    path: list[Waypoint]


def plan(
    load: ArrayT,
    topology: Topology,
    previous: ArrayT | None = None,
    reference_load: ArrayT | None = None,
    options: PlanOptions | None = None,
) -> Plan[ArrayT]:
    """Plan placements for ``load`` ``[L, E]``; ``previous`` ``[L, P]`` is the one in service
    (``-1`` marks an unused slot; the plan fills every slot), ``reference_load`` ``[L, E]``
    the load it was computed from (for the similarity gate).  Numpy arrays or torch
    tensors: the plan's arrays are of the kind ``load`` is."""
    options = options or PlanOptions()
    warm_up()  # compute_seconds counts computation, not numba loading its kernels
    started = time.perf_counter()
    views.validate_load(load, topology.num_experts)
    num_layers = load.shape[0]
    if previous is not None:
        views.validate_previous(previous, topology)
        if previous.shape[0] != num_layers:
            raise InvalidInputError(
                f"previous placement has {previous.shape[0]} layers, load has {num_layers}"
            )
    if reference_load is not None:
        views.validate_load(reference_load, topology.num_experts)

    load_np = np.asarray(to_numpy(load), dtype=np.float64)
    fresh = fresh_placement(load_np, topology, options.mode)
    fresh_imbalance = views.imbalance(load_np, fresh, topology.num_ranks)
    bound = views.imbalance_lower_bound(load_np, topology)

    if previous is None:
        identity = views.identity_placement(num_layers, topology)
        before = views.imbalance(load_np, identity, topology.num_ranks)
        initial_moves = views.moves(identity, fresh)
        layers = [
            LayerPlan(
                layer,
                LayerReason.INITIAL,
                float(before[layer]),
                float(fresh_imbalance[layer]),
                float(fresh_imbalance[layer]),
                float(bound[layer]),
                int(initial_moves[layer]),
                None,
            )
            for layer in range(num_layers)
        ]
        return Plan(
            like(fresh, load),
            layers,
            time.perf_counter() - started,
            load,
            like(identity, load),
        )

    reference = (
        None if reference_load is None else np.asarray(to_numpy(reference_load), dtype=np.float64)
    )
    result, layers = _plan_against_previous(
        load_np,
        topology,
        np.asarray(to_numpy(previous), dtype=np.int64),
        reference,
        options,
        fresh,
        fresh_imbalance,
        bound,
    )
    return Plan(like(result, load), layers, time.perf_counter() - started, load, previous)


def _plan_against_previous(
    load_np: FloatArray,
    topology: Topology,
    served: IntArray,
    reference_load: FloatArray | None,
    options: PlanOptions,
    fresh: IntArray,
    fresh_imbalance: FloatArray,
    bound: FloatArray,
) -> tuple[IntArray, list[LayerPlan]]:
    """``served`` ``[L, P]``: the placement in service, -1 where a slot is unused."""
    num_layers = load_np.shape[0]
    hierarchical = resolve_mode(options.mode, topology) == "hierarchical"
    slack = options.slack_for(topology)
    before = views.imbalance(load_np, served, topology.num_ranks)
    similarity = (
        load_similarity(load_np, reference_load).tolist() if reference_load is not None else None
    )
    # Every layer is planned from a full placement; filled slots count as moves.
    previous_np = fill_unused_slots(served, load_np, topology, hierarchical)
    fills = (previous_np != served).sum(axis=1)
    kept_imbalance = views.imbalance(load_np, previous_np, topology.num_ranks)
    aligned = align_to_previous(fresh, previous_np, topology)
    aligned_moves = (aligned != served).sum(axis=1)
    aligned_imbalance = fresh_imbalance.copy()
    if (
        hierarchical
        and topology.num_nodes > 1
        and groups_of_node_in(previous_np, topology) is not None
    ):
        # Keeping every group on its node moves far fewer weights; take it per layer when it
        # balances within slack of the free optimum.
        on_nodes = rebalance_within_nodes(load_np, previous_np, topology)
        on_nodes_imbalance = views.imbalance(load_np, on_nodes, topology.num_ranks)
        on_nodes_aligned = align_to_previous(on_nodes, previous_np, topology)
        on_nodes_moves = (on_nodes_aligned != served).sum(axis=1)
        better = (on_nodes_imbalance <= fresh_imbalance + slack) & (on_nodes_moves < aligned_moves)
        aligned[better] = on_nodes_aligned[better]
        aligned_moves[better] = on_nodes_moves[better]
        aligned_imbalance[better] = on_nodes_imbalance[better]
    result = previous_np.copy()
    budget = options.max_moves if options.max_moves is not None else np.iinfo(np.int64).max
    # Filling unused slots is not optional: it comes out of the budget first.
    budget = max(budget - int(fills.sum()), 0)

    reasons: dict[int, LayerReason] = {}
    choices: dict[int, _Choice] = {}
    for layer in range(num_layers):
        # Within slack of the balance the aligned candidate offers (itself within slack of a
        # fresh placement when it keeps groups on their nodes).
        target = float(aligned_imbalance[layer]) + slack
        if (
            similarity is not None
            and options.similarity_threshold is not None
            and similarity[layer] >= options.similarity_threshold
        ):
            reasons[layer] = LayerReason.LOAD_UNCHANGED
            continue
        if float(kept_imbalance[layer]) <= target:
            reasons[layer] = LayerReason.ALREADY_BALANCED
            continue
        path = search_path(
            load_np[layer],
            previous_np[layer],
            topology,
            target,
            hierarchical,
            max_moves=int(min(aligned_moves[layer], budget + fills[layer])),
            in_service=served[layer],
        )
        reaching = [w for w in path if w.imbalance <= target]
        if reaching and reaching[0].moves <= aligned_moves[layer]:
            best = reaching[0]
            choice = _Choice(best.phy2log, best.moves, best.imbalance, path)
        else:
            choice = _Choice(
                aligned[layer], int(aligned_moves[layer]), float(aligned_imbalance[layer]), path
            )
        if float(kept_imbalance[layer]) - choice.imbalance < options.min_gain:
            reasons[layer] = LayerReason.GAIN_TOO_SMALL
            continue
        choices[layer] = choice

    moves = fills.astype(np.int64)
    after = kept_imbalance.copy()
    # Largest gain first: when the budget runs short, the worst layers are fixed first.
    for layer in sorted(choices, key=lambda i: choices[i].imbalance - float(kept_imbalance[i])):
        choice = choices[layer]
        partial = None
        # The layer's own fills are already paid for.
        allowed = budget + int(fills[layer])
        if choice.moves > allowed:
            fitting = [
                w
                for w in choice.path
                if w.moves <= allowed
                and float(kept_imbalance[layer]) - w.imbalance >= max(options.min_gain, 1e-12)
            ]
            partial = min(fitting, key=lambda w: (w.imbalance, w.moves)) if fitting else None
            if partial is None:
                reasons[layer] = LayerReason.BUDGET_EXHAUSTED
                continue
            choice = _Choice(partial.phy2log, partial.moves, partial.imbalance, choice.path)
        result[layer] = choice.placement
        moves[layer] = choice.moves
        after[layer] = choice.imbalance
        budget -= choice.moves - int(fills[layer])
        reasons[layer] = LayerReason.BUDGET_LIMITED if partial is not None else LayerReason.UPDATED

    for layer, reason in reasons.items():
        if fills[layer] and reason not in (LayerReason.UPDATED, LayerReason.BUDGET_LIMITED):
            reasons[layer] = LayerReason.UNUSED_SLOTS_FILLED

    layers = [
        LayerPlan(
            layer,
            reasons[layer],
            float(before[layer]),
            float(after[layer]),
            float(fresh_imbalance[layer]),
            float(bound[layer]),
            int(moves[layer]),
            similarity[layer] if similarity is not None else None,
        )
        for layer in range(num_layers)
    ]
    return result, layers
