"""Which EP group a Restart rollout restarts next: a pure function of what the pods and
workloads say (no I/O), so every rule has a table-driven test.

A group is one serving replica; restarting it takes it out of service until its pods are
Ready again.  The rules keep serving capacity at N−1 groups or more:
1. one group at a time: while a group stamped with the target is not yet back (every rank
   Ready at the target revision, nothing left over), wait for it;
2. a group that is down anyway (some pod not Ready) and still needs the target goes first:
   restarting it costs no capacity;
3. while some other group is down, restart no healthy group (that would leave N−2);
4. otherwise the first group, by name, that is not stamped with the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

REVISION_ANNOTATION = "eplb.io/placement-revision"


class Step(str, Enum):
    DONE = "Done"  # every group serves the target
    WAIT = "Wait"  # a restarted group is coming back
    HOLD = "Hold"  # another group is down: restarting one now would drop capacity further
    RESTART = "Restart"  # restart ``group`` now


@dataclass(frozen=True)
class PodView:
    name: str
    revision: int | None  # the placement revision it started with (pod annotation)
    ready: bool
    terminating: bool


@dataclass(frozen=True)
class GroupView:
    """One EP group: ``size`` pods expected (its workload's replicas: one a rank, or one
    holding every rank), the pods it has, and the revision its workload's pod template is
    stamped with (0: the start-up placement)."""

    name: str
    size: int
    pods: Sequence[PodView]
    stamped: int

    @property
    def live(self) -> list[PodView]:
        return [pod for pod in self.pods if not pod.terminating]

    @property
    def ready_pods(self) -> int:
        return sum(pod.ready for pod in self.live)

    @property
    def ready(self) -> bool:
        """In service: every pod Ready, none on its way out or in excess."""
        return len(self.pods) == self.size and self.ready_pods == self.size

    @property
    def serving(self) -> int | None:
        """The revision every live pod started with, or None while they differ."""
        revisions = {pod.revision for pod in self.live}
        return revisions.pop() if len(revisions) == 1 and self.live else None

    def serves(self, revision: int) -> bool:
        return self.stamped == revision and self.ready and self.serving == revision


@dataclass(frozen=True)
class Decision:
    step: Step
    group: str | None
    reason: str


def next_restart(
    groups: Sequence[GroupView], target: int, order: Sequence[str] | None = None
) -> Decision:
    """What to do next to bring every group to revision ``target``.

    ``order``: the only order the groups can restart in (a LeaderWorkerSet's partition
    admits them from the highest index down), or None for any; with one, rule 2 applies to
    the next group in it alone, and rule 4 takes that group."""
    ordered = sorted(groups, key=lambda g: g.name)
    if all(group.serves(target) for group in ordered):
        return Decision(Step.DONE, None, f"all {len(ordered)} groups serve revision {target}")
    coming = [group for group in ordered if group.stamped == target and not group.serves(target)]
    if coming:
        # Of several stamped groups not back yet (after an abort, say), the one that is down
        # is the one restarting now.
        group = next((g for g in coming if not g.ready), coming[0])
        return Decision(
            Step.WAIT, group.name,
            f"group {group.name} is restarting: {group.ready_pods} of {group.size} pods ready",
        )  # fmt: skip
    pending = [group for group in ordered if group.stamped != target]
    if order is not None:
        rank = {name: index for index, name in enumerate(order)}
        pending = sorted(pending, key=lambda g: rank[g.name])[:1]
    down = [group for group in ordered if not group.ready]
    pending_down = [group for group in pending if not group.ready]
    if pending_down:
        group = pending_down[0]
        return Decision(Step.RESTART, group.name, f"group {group.name} is down already")
    if down:
        names = ", ".join(group.name for group in down)
        return Decision(
            Step.HOLD, None,
            f"groups {names} not ready: restarting another would leave fewer than N-1 groups",
        )  # fmt: skip
    group = pending[0]
    return Decision(Step.RESTART, group.name, f"group {group.name} is next")


def overdue(restarted_at: float | None, now: float, deadline_seconds: float) -> bool:
    """A group restarted at ``restarted_at`` (Unix time) that is not back within the
    progress deadline: the rollout aborts."""
    return restarted_at is not None and now - restarted_at > deadline_seconds
