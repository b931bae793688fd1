"""What a hot-swap pass rolls out, and why: a pure function of the spec, the status, what
the pods serve and the stored revisions (no I/O), like kopf's causation detector; the
reconciler (:mod:`.reconcile`) performs what it says.

First match wins:
1. a rollout in progress (``status.targetRevision``): continue it, never re-planned;
2. ``spec.pinnedRevision``: not stored → invalid; in service already → hold it; else roll
   it back (its placement as a new, newer revision: sidecars only move forward);
3. ``spec.offline``: the mapping in its ConfigMap (new → a new revision; stored but not
   in service yet → again);
4. ``spec.online`` (unless pinned): a rebalance requested by a new ``spec.rebalance.id``,
   or due by the interval;
5. the current revision again (a pod restarted onto something else): re-sync;
6. nothing: the pods serve their start-up placement.
Steps 3 and 4 need I/O (a ConfigMap, the load window, a plan) and may find nothing new:
the reconciler then decides again with that cause in ``checked``, and the next rule applies.

A stored target then goes through :func:`gate`: every pod serves it already (report it in
service), an abort is being backed off from (wait), or roll it out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.revisions import Revision, revision_name
from eplb_operator.controller.rollout import pending_layers
from eplb_sidecar.api import Info


class Cause(str, Enum):
    """Why a pass rolls something out (or does not)."""

    CONTINUE = "continue"
    INVALID_PIN = "invalid-pin"
    PINNED = "pinned"
    ROLLBACK = "rollback"
    OFFLINE = "offline"
    REBALANCE_REQUESTED = "rebalance-requested"
    ONLINE_DUE = "online-due"
    RESYNC = "resync"
    NOTHING = "nothing"

    @property
    def shown(self) -> str:
        """The word users see in RolloutStarted Events (as before causes were an enum)."""
        return {Cause.PINNED: "rollback", Cause.REBALANCE_REQUESTED: "online",
                Cause.ONLINE_DUE: "online"}.get(self, self.value)  # fmt: skip

    @property
    def acts_first(self) -> bool:
        """The reconciler makes (or looks for) the target revision before rolling out."""
        return self in (Cause.ROLLBACK, Cause.OFFLINE, Cause.REBALANCE_REQUESTED,
                        Cause.ONLINE_DUE)  # fmt: skip


class Action(str, Enum):
    ROLL_OUT = "roll-out"
    IN_SERVICE = "in-service"  # every pod serves the target: report it, move nothing
    BACK_OFF = "back-off"  # an abort is recent: wait before trying again


@dataclass(frozen=True)
class Decision:
    cause: Cause
    target: Revision | None = None  # CONTINUE, PINNED, RESYNC: the stored revision
    pinned: Revision | None = None  # ROLLBACK: the revision whose placement is copied
    message: str = ""  # INVALID_PIN: why


def decide(
    spec: ExpertPlacementSpec,
    status: Mapping[str, Any],
    pod_states: Mapping[str, Info],
    revisions: Sequence[Revision],
    now: float,
    *,
    name: str,
    next_online: float,
    checked: frozenset[Cause] = frozenset(),
) -> Decision:
    """The first rule that applies (module docstring).  ``now`` and ``next_online`` are
    monotonic seconds; ``checked``: causes already acted on this pass without a new target.
    ``pod_states`` (pod → its sidecar's info) is for :func:`gate`; kept here so that one
    call has what a pass observed."""
    del pod_states  # the rules above do not depend on what the pods serve
    by_name = {revision.name: revision for revision in revisions}
    current = by_name.get(status.get("currentRevision") or "")
    in_progress = by_name.get(status.get("targetRevision") or "")
    if in_progress is not None:
        return Decision(Cause.CONTINUE, target=in_progress)
    if spec.pinned_revision is not None:
        pinned = by_name.get(revision_name(name, spec.pinned_revision))
        if pinned is None:
            kept = sorted(revision.number for revision in revisions)
            return Decision(Cause.INVALID_PIN, message=(
                f"pinnedRevision {spec.pinned_revision} is not stored (kept: {kept})"))  # fmt: skip
        if current is not None and torch.equal(current.placement, pinned.placement):
            return Decision(Cause.PINNED, target=current)
        return Decision(Cause.ROLLBACK, pinned=pinned)
    if spec.offline is not None and Cause.OFFLINE not in checked:
        return Decision(Cause.OFFLINE)
    online_checked = {Cause.REBALANCE_REQUESTED, Cause.ONLINE_DUE} & checked
    if spec.online is not None and not online_checked:
        trigger = spec.rebalance.id if spec.rebalance else None
        if trigger is not None and trigger != status.get("observedRebalanceId"):
            return Decision(Cause.REBALANCE_REQUESTED)
        if now >= next_online:
            return Decision(Cause.ONLINE_DUE)
    if current is not None:
        return Decision(Cause.RESYNC, target=current)
    return Decision(Cause.NOTHING)


def gate(
    target: Revision,
    cause: Cause,
    pod_states: Mapping[str, Info],
    now: float,
    retry_after: float,
) -> Action:
    """Whether to roll ``target`` out now.  After an abort (``retry_after``, monotonic) only
    a fresh online plan goes at once: the same target would fail the same way."""
    if not pending_layers(dict(pod_states), target.placement):
        return Action.IN_SERVICE
    if now < retry_after and cause not in (Cause.ONLINE_DUE, Cause.REBALANCE_REQUESTED):
        return Action.BACK_OFF
    return Action.ROLL_OUT
