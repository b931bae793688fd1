"""Decide, per layer, whether and how to change a placement: the policy's front door.

Given a load window and (optionally) the placement in service, a plan (:func:`plan`):
1. computes a fresh placement (``rebalance``) — the best balance on offer (:func:`_fresh`),
   and aligns it to the placement in service so that it moves as few slots as it can
   (:func:`_candidates`);
2. gates each layer: unchanged load (similarity ≥ threshold), already close enough to the
   fresh balance (within ``slack``), or too little gain (< ``min_gain``) keep their placement;
3. for the rest, chooses between the aligned fresh placement and the shortest prefix of an
   incremental search that reaches the fresh balance + ``slack``, whichever changes fewer
   slots (2 and 3: :func:`_choose`);
4. spends ``max_moves`` on the layers with the largest gain first; a layer that does not
   fit whole takes the best prefix of its incremental path that does (:func:`_spend_budget`).
Every layer's outcome is reported with its reason (:class:`LayerPlan`).
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
    """One layer's outcome: what it balances at before and after, and why."""

    layer: int
    reason: LayerReason
    imbalance_before: float  # of the placement in service (identity when there was none)
    imbalance_after: float  # of the placement planned
    imbalance_fresh: float  # a fresh placement's imbalance, moves regardless
    lower_bound: float  # no placement of these slots balances better
    moves: int  # slots whose expert changes (unused slots filled count)
    similarity: float | None  # of its load to the reference load; None: not compared

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


@dataclass(frozen=True)
class _Fresh:
    """Step 1: the best balance on offer, moves regardless."""

    placement: IntArray  # [L, P]
    imbalance: FloatArray  # [L]
    lower_bound: FloatArray  # [L]


@dataclass(frozen=True)
class _Candidates:
    """What each layer may keep or take, against the placement in service ``served``."""

    served: IntArray  # [L, P] in service, -1 where a slot is unused
    kept: IntArray  # [L, P] ``served`` with its unused slots filled: what "keep" means
    fills: IntArray  # [L] unused slots filled (moves every outcome pays)
    imbalance_before: FloatArray  # [L] of ``served``
    imbalance_kept: FloatArray  # [L] of ``kept``
    aligned: IntArray  # [L, P] the fresh (or on-node) placement, aligned to ``kept``
    aligned_moves: IntArray  # [L] slots ``aligned`` changes from ``served``
    aligned_imbalance: FloatArray  # [L]


@dataclass
class _Choice:
    placement: IntArray  # [P]
    moves: int
    imbalance: float
    path: list[Waypoint]  # the incremental search's waypoints, fewest moves first


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
    _validate(load, topology, previous, reference_load)
    load_np = np.asarray(to_numpy(load), dtype=np.float64)
    fresh = _fresh(load_np, topology, options)  # step 1
    if previous is None:
        identity = views.identity_placement(load_np.shape[0], topology)
        return Plan(
            placement=like(fresh.placement, load),
            layers=_initial_report(load_np, topology, identity, fresh),
            compute_seconds=time.perf_counter() - started,
            load=load,
            previous=like(identity, load),
        )
    served = np.asarray(to_numpy(previous), dtype=np.int64)
    reference = (
        None if reference_load is None else np.asarray(to_numpy(reference_load), dtype=np.float64)
    )
    hierarchical = resolve_mode(options.mode, topology) == "hierarchical"
    slack = options.slack_for(topology)
    candidates = _candidates(load_np, topology, served, fresh, hierarchical, slack)
    similarity = load_similarity(load_np, reference).tolist() if reference is not None else None
    budget = options.max_moves if options.max_moves is not None else np.iinfo(np.int64).max
    # Filling unused slots is not optional: it comes out of the budget first.
    budget = max(budget - int(candidates.fills.sum()), 0)
    reasons, choices = _choose(  # steps 2 and 3
        load_np, topology, candidates, similarity, options, hierarchical, slack, budget
    )
    result, moves, after = _spend_budget(candidates, choices, budget, options, reasons)  # step 4
    for layer, reason in reasons.items():
        if candidates.fills[layer] and reason not in (
            LayerReason.UPDATED,
            LayerReason.BUDGET_LIMITED,
        ):
            reasons[layer] = LayerReason.UNUSED_SLOTS_FILLED
    layers = [
        LayerPlan(
            layer=layer,
            reason=reasons[layer],
            imbalance_before=float(candidates.imbalance_before[layer]),
            imbalance_after=float(after[layer]),
            imbalance_fresh=float(fresh.imbalance[layer]),
            lower_bound=float(fresh.lower_bound[layer]),
            moves=int(moves[layer]),
            similarity=similarity[layer] if similarity is not None else None,
        )
        for layer in range(load_np.shape[0])
    ]
    return Plan(
        placement=like(result, load),
        layers=layers,
        compute_seconds=time.perf_counter() - started,
        load=load,
        previous=previous,
    )


def _validate(
    load: ArrayT, topology: Topology, previous: ArrayT | None, reference_load: ArrayT | None
) -> None:
    views.validate_load(load, topology.num_experts)
    if previous is not None:
        views.validate_previous(previous, topology)
        if previous.shape[0] != load.shape[0]:
            raise InvalidInputError(
                f"previous placement has {previous.shape[0]} layers, load has {load.shape[0]}"
            )
    if reference_load is not None:
        views.validate_load(reference_load, topology.num_experts)


def _fresh(load_np: FloatArray, topology: Topology, options: PlanOptions) -> _Fresh:
    """Step 1: a fresh placement of ``load_np`` ``[L, E]``, its balance and the bound."""
    placement = fresh_placement(load_np, topology, options.mode)
    return _Fresh(
        placement=placement,
        imbalance=views.imbalance(load_np, placement, topology.num_ranks),
        lower_bound=views.imbalance_lower_bound(load_np, topology),
    )


def _initial_report(
    load_np: FloatArray, topology: Topology, identity: IntArray, fresh: _Fresh
) -> list[LayerPlan]:
    """No placement in service: every layer takes the fresh one, from ``identity``."""
    before = views.imbalance(load_np, identity, topology.num_ranks)
    moves = views.moves(identity, fresh.placement)
    return [
        LayerPlan(
            layer=layer,
            reason=LayerReason.INITIAL,
            imbalance_before=float(before[layer]),
            imbalance_after=float(fresh.imbalance[layer]),
            imbalance_fresh=float(fresh.imbalance[layer]),
            lower_bound=float(fresh.lower_bound[layer]),
            moves=int(moves[layer]),
            similarity=None,
        )
        for layer in range(load_np.shape[0])
    ]


def _candidates(
    load_np: FloatArray,
    topology: Topology,
    served: IntArray,
    fresh: _Fresh,
    hierarchical: bool,
    slack: float,
) -> _Candidates:
    """What keeping and what the fresh placement (aligned to what is kept, so that it moves
    as few slots as it can) each cost and give, per layer."""
    # Every layer is planned from a full placement; filled slots count as moves.
    kept = fill_unused_slots(served, load_np, topology, hierarchical)
    aligned = align_to_previous(fresh.placement, kept, topology)
    aligned_moves = (aligned != served).sum(axis=1)
    aligned_imbalance = fresh.imbalance.copy()
    if hierarchical and topology.num_nodes > 1 and groups_of_node_in(kept, topology) is not None:
        # Keeping every group on its node moves far fewer weights; take it per layer when it
        # balances within slack of the free optimum.
        on_nodes = rebalance_within_nodes(load_np, kept, topology)
        on_nodes_imbalance = views.imbalance(load_np, on_nodes, topology.num_ranks)
        on_nodes_aligned = align_to_previous(on_nodes, kept, topology)
        on_nodes_moves = (on_nodes_aligned != served).sum(axis=1)
        better = (on_nodes_imbalance <= fresh.imbalance + slack) & (on_nodes_moves < aligned_moves)
        aligned[better] = on_nodes_aligned[better]
        aligned_moves[better] = on_nodes_moves[better]
        aligned_imbalance[better] = on_nodes_imbalance[better]
    return _Candidates(
        served=served,
        kept=kept,
        fills=(kept != served).sum(axis=1),
        imbalance_before=views.imbalance(load_np, served, topology.num_ranks),
        imbalance_kept=views.imbalance(load_np, kept, topology.num_ranks),
        aligned=aligned,
        aligned_moves=aligned_moves,
        aligned_imbalance=aligned_imbalance,
    )


def _choose(
    load_np: FloatArray,
    topology: Topology,
    candidates: _Candidates,
    similarity: list[float] | None,
    options: PlanOptions,
    hierarchical: bool,
    slack: float,
    budget: int,
) -> tuple[dict[int, LayerReason], dict[int, _Choice]]:
    """Steps 2 and 3: the layers that keep their placement (with why), and for the others
    the candidate that changes fewer slots: the aligned fresh placement, or the shortest
    prefix of an incremental search from what is kept that reaches the same target."""
    reasons: dict[int, LayerReason] = {}
    choices: dict[int, _Choice] = {}
    for layer in range(load_np.shape[0]):
        # Within slack of the balance the aligned candidate offers (itself within slack of a
        # fresh placement when it keeps groups on their nodes).
        target = float(candidates.aligned_imbalance[layer]) + slack
        kept_imbalance = float(candidates.imbalance_kept[layer])
        if (
            similarity is not None
            and options.similarity_threshold is not None
            and similarity[layer] >= options.similarity_threshold
        ):
            reasons[layer] = LayerReason.LOAD_UNCHANGED
            continue
        if kept_imbalance <= target:
            reasons[layer] = LayerReason.ALREADY_BALANCED
            continue
        aligned_moves = int(candidates.aligned_moves[layer])
        path = search_path(
            load_np[layer],
            candidates.kept[layer],
            topology,
            target,
            hierarchical,
            max_moves=int(min(aligned_moves, budget + candidates.fills[layer])),
            in_service=candidates.served[layer],
        )
        reaching = [w for w in path if w.imbalance <= target]
        if reaching and reaching[0].moves <= aligned_moves:
            best = reaching[0]
            choice = _Choice(best.phy2log, best.moves, best.imbalance, path)
        else:
            choice = _Choice(
                candidates.aligned[layer],
                aligned_moves,
                float(candidates.aligned_imbalance[layer]),
                path,
            )
        if kept_imbalance - choice.imbalance < options.min_gain:
            reasons[layer] = LayerReason.GAIN_TOO_SMALL
            continue
        choices[layer] = choice
    return reasons, choices


def _spend_budget(
    candidates: _Candidates,
    choices: dict[int, _Choice],
    budget: int,
    options: PlanOptions,
    reasons: dict[int, LayerReason],
) -> tuple[IntArray, IntArray, FloatArray]:
    """Step 4: the chosen layers take their placement, largest gain first, while ``budget``
    moves last; one that does not fit whole takes the best prefix of its path that does.
    Records each chosen layer's reason; returns the placement ``[L, P]``, the moves ``[L]``
    and the imbalance after ``[L]``."""
    result = candidates.kept.copy()
    moves = candidates.fills.astype(np.int64)
    after = candidates.imbalance_kept.copy()
    kept_imbalance = candidates.imbalance_kept
    # Largest gain first: when the budget runs short, the worst layers are fixed first.
    for layer in sorted(choices, key=lambda i: choices[i].imbalance - float(kept_imbalance[i])):
        choice = choices[layer]
        partial = None
        # The layer's own fills are already paid for.
        allowed = budget + int(candidates.fills[layer])
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
        budget -= choice.moves - int(candidates.fills[layer])
        reasons[layer] = LayerReason.BUDGET_LIMITED if partial is not None else LayerReason.UPDATED
    return result, moves, after
