"""Pure parts of the operator: conditions and the pods-versus-spec check."""

from __future__ import annotations

from typing import Any

import pytest

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec, LabelSelector
from eplb_operator.controller.conditions import ConditionStatus, condition, set_condition
from eplb_operator.controller.kube import in_cluster_server
from eplb_operator.controller.pods import check_pods

SPEC = ExpertPlacementSpec.model_validate(
    {
        "selector": {"matchLabels": {"app": "ds"}},
        "model": {"layers": 2, "experts": 8},
        "topology": {"ranks": 2, "slotsPerRank": 5},
        "online": {},
    }
)


def pod(name: str, group: str | None, rank: str | None) -> dict[str, Any]:
    labels = {
        k: v for k, v in {"eplb.io/group": group, "eplb.io/rank": rank}.items() if v is not None
    }
    return {"metadata": {"name": name, "labels": labels}}


def test_transition_time_moves_only_when_status_changes() -> None:
    first = set_condition(None, "Degraded", ConditionStatus.TRUE, "A", "m1", 1, now="t1")
    same = set_condition(first, "Degraded", ConditionStatus.TRUE, "B", "m2", 2, now="t2")
    flipped = set_condition(same, "Degraded", ConditionStatus.FALSE, "C", "m3", 3, now="t3")
    assert condition(same, "Degraded") == {
        "type": "Degraded",
        "status": "True",
        "reason": "B",
        "message": "m2",
        "lastTransitionTime": "t1",
        "observedGeneration": 2,
    }
    assert condition(flipped, "Degraded")["lastTransitionTime"] == "t3"  # type: ignore[index]
    both = set_condition(flipped, "Ready", ConditionStatus.FALSE, "R", "", 3, now="t4")
    assert [c["type"] for c in both] == ["Degraded", "Ready"]


def test_complete_groups_are_consistent() -> None:
    pods = [pod("a0", "a", "0"), pod("a1", "a", "1"), pod("b1", "b", "1"), pod("b0", "b", "0")]
    check = check_pods(pods, SPEC)
    assert check.consistent and check.groups == {"a": {0: "a0", 1: "a1"}, "b": {0: "b0", 1: "b1"}}


def test_every_inconsistency_is_named() -> None:
    pods = [
        pod("a0", "a", "0"),
        pod("dup", "a", "0"),
        pod("far", "a", "7"),
        pod("nogroup", None, "1"),
        pod("norank", "a", None),
        pod("b1", "b", "1"),
    ]
    problems = check_pods(pods, SPEC).problems
    assert "group a: pods a0 and dup both claim rank 0" in problems
    assert "pod far has rank 7, outside 0..1" in problems
    assert "pod nogroup has no eplb.io/group label" in problems
    assert "pod norank has no integer eplb.io/rank label" in problems
    assert "group a has 1 of 2 ranks (missing rank 1)" in problems
    assert "group b has 1 of 2 ranks (missing rank 0)" in problems
    assert check_pods([], SPEC).problems == ["no pods match the selector"]


def multi_spec(rank_from: str, ranks: int = 8, per_pod: int = 4) -> ExpertPlacementSpec:
    return ExpertPlacementSpec.model_validate(
        {
            "selector": {"matchLabels": {"app": "ds"}},
            "pods": {"rankFrom": rank_from, "ranksPerPod": per_pod},
            "model": {"layers": 2, "experts": 8},
            "topology": {"ranks": ranks, "slotsPerRank": 2},
            "online": {},
        }
    )


def statefulset_pod(name: str, statefulset: str | None, ordinal: str | None) -> dict[str, Any]:
    labels = {"apps.kubernetes.io/pod-index": ordinal} if ordinal is not None else {}
    owners = (
        [{"kind": "StatefulSet", "name": statefulset, "controller": True, "apiVersion": "apps/v1"}]
        if statefulset is not None
        else []
    )
    return {"metadata": {"name": name, "labels": labels, "ownerReferences": owners}}


def lws_pod(name: str, lws: str, group: str, worker: str | None) -> dict[str, Any]:
    labels = {
        "leaderworkerset.sigs.k8s.io/name": lws,
        "leaderworkerset.sigs.k8s.io/group-index": group,
    }
    if worker is not None:
        labels["leaderworkerset.sigs.k8s.io/worker-index"] = worker
    return {"metadata": {"name": name, "labels": labels}}


def test_statefulset_ordinal_groups_by_statefulset_with_pods_of_several_ranks() -> None:
    pods = [statefulset_pod(f"{s}-{i}", s, str(i)) for s in ("moe-a", "moe-b") for i in (1, 0)]
    check = check_pods(pods, multi_spec("StatefulSetOrdinal"))
    assert check.consistent, check.problems
    assert check.groups == {"moe-a": {0: "moe-a-0", 1: "moe-a-1"},
                            "moe-b": {0: "moe-b-0", 1: "moe-b-1"}}  # fmt: skip


def test_statefulset_ordinal_problems() -> None:
    pods = [
        statefulset_pod("s-0", "s", "0"),
        statefulset_pod("orphan", None, "1"),
        statefulset_pod("s-2", "s", "2"),
        statefulset_pod("noindex", "s", None),
    ]
    problems = check_pods(pods, multi_spec("StatefulSetOrdinal")).problems
    assert "pod orphan is not controlled by a StatefulSet (rankFrom StatefulSetOrdinal)" in problems
    assert "pod s-2 has pod index 2, outside 0..1 (2 pods of 4 ranks each)" in problems
    assert "pod noindex has no integer apps.kubernetes.io/pod-index label" in problems
    assert "group s has 1 of 2 pods (missing pod index 1)" in problems


def test_leaderworkerset_group_is_lws_group_and_index_is_worker() -> None:
    pods = [lws_pod(f"ds-{g}-{w}", "ds", str(g), str(w)) for g in (0, 1) for w in (0, 1)]
    pods.append(lws_pod("other-0-0", "other", "0", "0"))
    pods.append(lws_pod("other-0-1", "other", "0", "1"))
    check = check_pods(pods, multi_spec("LeaderWorkerSet"))
    assert check.consistent, check.problems
    assert check.groups["ds-1"] == {0: "ds-1-0", 1: "ds-1-1"}
    assert set(check.groups) == {"ds-0", "ds-1", "other-0"}
    duplicate = [*pods, lws_pod("dup", "ds", "1", "1"), lws_pod("nowork", "ds", "0", None)]
    problems = check_pods(duplicate, multi_spec("LeaderWorkerSet")).problems
    assert "group ds-1: pods ds-1-1 and dup both claim pod index 1" in problems
    assert "pod nowork has no integer leaderworkerset.sigs.k8s.io/worker-index label" in problems


def test_ranks_per_pod_must_divide_ranks() -> None:
    with pytest.raises(ValueError, match=r"ranksPerPod must divide topology\.ranks"):
        multi_spec("Label", ranks=6, per_pod=4)
    assert multi_spec("Label").pods.rank_label == "eplb.io/rank"  # unchanged default


def test_selector_query_string() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"b": "2", "a": "1"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["x", "y"]},
                {"key": "gone", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.to_query() == "a=1,b=2,tier in (x,y),!gone"


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
         "https://10.0.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
         "https://[fd00::1]:6443"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None),
        ({}, None),
    ],
)  # fmt: skip
def test_kopf_and_our_client_find_the_api_server_where_the_pod_environment_says(
    environ: dict[str, str], server: str | None
) -> None:
    assert in_cluster_server(environ) == server
