"""``next_restart``, table-driven: which EP group a Restart rollout restarts next, so that
serving capacity never drops below N−1 groups."""

from __future__ import annotations

import pytest

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.restart_decide import (
    GroupView,
    PodView,
    Step,
    next_restart,
    overdue,
)
from eplb_operator.controller.restart_pods import pods_by_group

from .conftest import restart_spec


def group(name: str, stamped: int, *pods: str, size: int = 2) -> GroupView:
    """Pods as ``"<revision><state>"``: state ``r`` Ready, ``n`` not Ready, ``t`` terminating."""
    views = [PodView(f"{name}-{i}", int(p[:-1]), p[-1] == "r", p[-1] == "t")
             for i, p in enumerate(pods)]  # fmt: skip
    return GroupView(name, size, views, stamped)


CASES = [
    # (groups, target, expected step, expected group)
    ([group("a", 1, "1r", "1r"), group("b", 1, "1r", "1r")], 1, Step.DONE, None),
    # nothing stamped yet: the first group by name
    ([group("b", 0, "0r", "0r"), group("a", 0, "0r", "0r")], 1, Step.RESTART, "a"),
    # a stamped group still on its way back: wait for it, whatever else is pending
    ([group("a", 1, "0t", "1n"), group("b", 0, "0r", "0r")], 1, Step.WAIT, "a"),
    ([group("a", 1, "1r"), group("b", 0, "0r", "0r")], 1, Step.WAIT, "a"),  # one pod missing
    ([group("a", 1, "1r", "0r"), group("b", 0, "0r", "0r")], 1, Step.WAIT, "a"),  # mixed
    # every pod of a gone (its StatefulSet deleted them, cannot make them yet): wait for a
    ([group("a", 1), group("b", 0, "0r", "0r")], 1, Step.WAIT, "a"),
    ([group("a", 0), group("b", 0, "0r", "0r")], 1, Step.RESTART, "a"),  # down: goes first
    # a is back: b next
    ([group("a", 1, "1r", "1r"), group("b", 0, "0r", "0r")], 1, Step.RESTART, "b"),
    # a pending group that is down anyway goes first: restarting it costs no capacity
    ([group("a", 0, "0r", "0r"), group("b", 0, "0r", "0n")], 1, Step.RESTART, "b"),
    # another group is down and not pending: restarting a healthy one would leave N-2
    (
        [group("a", 0, "0r", "0r"), group("b", 1, "1r", "1r"), group("c", 1, "1r", "1n")],
        1,
        Step.WAIT,
        "c",
    ),
    # a group down on another revision (an aborted rollout's) is pending too: it goes first
    (
        [group("a", 0, "0r", "0r"), group("b", 1, "1r", "1r"), group("c", 2, "2r", "2n")],
        1,
        Step.RESTART,
        "c",
    ),
    # rollback onto an older revision is the same walk
    ([group("a", 2, "2r", "2r"), group("b", 2, "2r", "2r")], 1, Step.RESTART, "a"),
]


@pytest.mark.parametrize(("groups", "target", "step", "chosen"), CASES)
def test_next_restart(groups: list[GroupView], target: int, step: Step, chosen: str | None) -> None:
    decision = next_restart(groups, target)
    assert (decision.step, decision.group) == (step, chosen), decision.reason


def test_a_walk_never_has_two_groups_down() -> None:
    """Acting on every decision, with restarted pods coming back a pass later, brings three
    groups to the target with at most one group out of service at any pass."""
    groups = {name: group(name, 0, "0r", "0r") for name in "abc"}
    restarted: set[str] = set()
    for _ in range(20):
        decision = next_restart(list(groups.values()), 1)
        assert sum(not g.ready for g in groups.values()) <= 1
        if decision.step == Step.DONE:
            break
        for name in restarted:  # last pass's restart is back
            groups[name] = group(name, 1, "1r", "1r")
        restarted = set()
        if decision.step == Step.RESTART:
            assert decision.group is not None
            groups[decision.group] = group(decision.group, 1, "0t", "1n")
            restarted.add(decision.group)
    assert decision.step == Step.DONE
    assert all(g.serves(1) for g in groups.values())


def test_overdue() -> None:
    assert overdue(100.0, 221.0, 120)
    assert not overdue(100.0, 220.0, 120)
    assert not overdue(None, 1e9, 120)


def test_a_known_group_without_pods_stays_a_group() -> None:
    """A group whose pods are all gone is still seen (from status.groups), so the rules
    above know it is down; a group that no pass knew and has no pods is none."""
    spec = ExpertPlacementSpec.model_validate(restart_spec("sglang", "StatefulSet"))
    pods = [{"metadata": {"name": f"moe-1-{i}", "labels": {"eplb.io/group": "1"}}}
            for i in range(2)]  # fmt: skip
    by_group, problems = pods_by_group(pods, spec, known=["0", "1"])
    assert (sorted(by_group), len(by_group["0"]), len(by_group["1"]), problems) == (
        ["0", "1"], 0, 2, [])  # fmt: skip
    assert sorted(pods_by_group(pods, spec)[0]) == ["1"]
    assert pods_by_group([], spec, known=["0"]) == ({"0": []}, [])
    assert pods_by_group([], spec)[1] == ["no pods match the selector"]
