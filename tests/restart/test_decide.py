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
from eplb_operator.controller.restart_pods import (
    group_size,
    lws_group_index,
    lws_group_stamp,
    pods_by_group,
    scaled,
    stamped_revision,
    workload_problem,
)

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
    # two stamped groups not back (after an abort): the wait names the one that is down
    ([group("a", 1, "0r", "0r"), group("b", 1, "0t", "1n")], 1, Step.WAIT, "b"),
]


# A LeaderWorkerSet's groups restart only from the highest index down (its partition).
LWS_ORDER = ["moe-2", "moe-1", "moe-0"]
ORDERED_CASES = [
    # (groups, expected step, expected group)
    ([group("moe-0", 0, "0r", "0r"), group("moe-1", 0, "0r", "0r"),
      group("moe-2", 0, "0r", "0r")], Step.RESTART, "moe-2"),
    ([group("moe-0", 0, "0r", "0r"), group("moe-1", 0, "0r", "0r"),
      group("moe-2", 1, "1r", "1r")], Step.RESTART, "moe-1"),
    # moe-0 is down, but only moe-1 can go next: restarting it would leave N-2
    ([group("moe-0", 0, "0r", "0n"), group("moe-1", 0, "0r", "0r"),
      group("moe-2", 1, "1r", "1r")], Step.HOLD, None),
    # the next in order is down anyway: it goes
    ([group("moe-0", 0, "0r", "0r"), group("moe-1", 0, "0n", "0r"),
      group("moe-2", 1, "1r", "1r")], Step.RESTART, "moe-1"),
    ([group("moe-0", 1, "0t", "1n"), group("moe-1", 1, "1r", "1r"),
      group("moe-2", 1, "1r", "1r")], Step.WAIT, "moe-0"),
]  # fmt: skip


@pytest.mark.parametrize(("groups", "step", "chosen"), ORDERED_CASES)
def test_next_restart_in_a_fixed_order(
    groups: list[GroupView], step: Step, chosen: str | None
) -> None:
    decision = next_restart(groups, 1, LWS_ORDER)
    assert (decision.step, decision.group) == (step, chosen), decision.reason


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


def leader_worker_set(
    rolling: dict[str, object] | None = None, volume: bool = True, leader: bool = False
) -> dict[str, object]:
    """A LeaderWorkerSet as the API returns it (its webhook filled the rollout defaults)."""
    volumes = (
        [{"name": "eplb-placement", "configMap": {"name": "moe-placement-0"}}] if volume else []
    )
    template = {"metadata": {"annotations": {"eplb.io/placement-revision": "3"}},
                "spec": {"volumes": volumes, "containers": []}}  # fmt: skip
    templates: dict[str, object] = {"size": 4, "workerTemplate": template}
    if leader:
        templates["leaderTemplate"] = {"spec": {"volumes": [], "containers": []}}
    return {
        "metadata": {"name": "moe"},
        "spec": {"replicas": 4, "leaderWorkerTemplate": templates,
                 "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration":
                                     {"maxUnavailable": 1, "maxSurge": 0, **(rolling or {})}}},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("lws", "problem"),
    [
        (leader_worker_set(), None),
        # the rollout paces the groups through the partition, whatever maxUnavailable says
        (leader_worker_set({"maxUnavailable": 2, "partition": 2}), None),
        (leader_worker_set({"maxSurge": 1}), "maxSurge 1 adds groups"),
        (leader_worker_set({"maxSurge": "25%"}), "maxSurge 25% adds groups"),
        (leader_worker_set({"maxSurge": "10%"}), None),  # rounds down to no group
        (leader_worker_set(volume=False), "no configMap volume 'eplb-placement'"),
        # a leader template of its own must get the start-up file too
        (leader_worker_set(leader=True), "no configMap volume 'eplb-placement'"),
    ],
)
def test_workload_problem_of_a_leaderworkerset(lws: dict[str, object], problem: str | None) -> None:
    found = workload_problem(lws, "LeaderWorkerSet")
    assert found == problem if problem is None else problem in (found or ""), found


def test_a_leaderworkerset_group_is_one_of_its_groups() -> None:
    lws = leader_worker_set()
    assert (group_size(lws, "LeaderWorkerSet"), stamped_revision(lws, "LeaderWorkerSet")) == (4, 3)
    assert (scaled(1, 8), scaled("25%", 8), scaled("30%", 3), scaled("x", 5)) == (1, 2, 0, 5)
    assert lws_group_index("moe-12", "moe") == 12
    # At or above the partition a group is on the templates' revision; below, on its pods'.
    held = leader_worker_set({"partition": 2})
    pods = group("moe-1", 0, "2r", "1r").pods
    assert [lws_group_stamp(held, index, pods) for index in (3, 2, 1)] == [3, 3, 1]
    assert lws_group_stamp(held, 0, []) == 0
    spec = ExpertPlacementSpec.model_validate(restart_spec(
        "sglang", "LeaderWorkerSet", workloadRef={"kind": "LeaderWorkerSet", "name": "moe"},
        pods={"rankFrom": "LeaderWorkerSet"}))  # fmt: skip

    def pod(name: str, group: int | None, worker: int) -> dict[str, object]:
        labels = {"leaderworkerset.sigs.k8s.io/name": "moe",
                  "leaderworkerset.sigs.k8s.io/worker-index": str(worker)}  # fmt: skip
        if group is not None:
            labels["leaderworkerset.sigs.k8s.io/group-index"] = str(group)
        return {"metadata": {"name": name, "labels": labels}}

    pods = [pod("moe-0", 0, 0), pod("moe-0-1", 0, 1), pod("moe-1", 1, 0), pod("stray", None, 1)]
    by_group, problems = pods_by_group(pods, spec)
    assert {g: [p["metadata"]["name"] for p in ps] for g, ps in by_group.items()} == {
        "moe-0": ["moe-0", "moe-0-1"], "moe-1": ["moe-1"]}  # fmt: skip
    assert problems == [
        "pod stray has no leaderworkerset.sigs.k8s.io/name and "
        "leaderworkerset.sigs.k8s.io/group-index labels (rankFrom LeaderWorkerSet)"
    ]
