"""Pure parts of the operator: conditions and the pods-versus-spec check."""

from __future__ import annotations

from typing import Any

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec, LabelSelector
from eplb_operator.controller.conditions import ConditionStatus, condition, set_condition
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
