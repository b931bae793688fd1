"""``decide`` and ``gate``, table-driven (as kopf's tests/causation): every cause a hot-swap
pass can have, and every action on a stored target."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.decide import Action, Cause, decide, gate
from eplb_operator.controller.revisions import Revision, revision_name
from eplb_sidecar.api import Info

NAME = "ds"
LAYERS, SLOTS, EXPERTS = 2, 6, 4
START = torch.tensor([[0, 1, 2, 3, 0, 1]] * LAYERS)
OTHER = torch.tensor([[3, 2, 1, 0, 3, 2]] * LAYERS)


def spec(**changes: Any) -> ExpertPlacementSpec:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": NAME}},
        "model": {"layers": LAYERS, "experts": EXPERTS},
        "topology": {"ranks": 2, "slotsPerRank": SLOTS // 2},
    }
    body.update(changes)
    return ExpertPlacementSpec.model_validate(body)


def revision(number: int, placement: torch.Tensor = START) -> Revision:
    return Revision(number, revision_name(NAME, number), placement, None, "online")


def pods(*placements: torch.Tensor) -> dict[str, Info]:
    return {
        f"pod-{i}": Info(pod=f"pod-{i}", group="0", rank=i, ranks=2, layers=LAYERS,
                         experts=EXPERTS, slots_per_rank=SLOTS // 2, device="cpu",
                         expert_bytes=64, revisions=[0] * LAYERS, staged=[],
                         placement=placement.tolist(), checkpoint=False)
        for i, placement in enumerate(placements)
    }  # fmt: skip


ONLINE = {"online": {}}
OFFLINE = {"offline": {"configMapRef": {"name": "mapping"}}}
R1, R2, R3 = revision(1), revision(2, OTHER), revision(3)
STORED = [R1, R2]

# (id, spec changes, status, revisions, now, next_online, checked, cause, target, pinned)
Case = tuple[str, dict[str, Any], dict[str, Any], list[Revision], float, float, set[Cause],
             Cause, Revision | None, Revision | None]  # fmt: skip
# fmt: off
CASES: list[Case] = [
    ("in progress wins over everything",
     {**ONLINE, **OFFLINE, "pinnedRevision": 1}, {"targetRevision": "ds-2"}, STORED,
     100.0, 0.0, set(), Cause.CONTINUE, R2, None),
    ("a target no longer stored is not continued",
     ONLINE, {"targetRevision": "ds-9", "currentRevision": "ds-1"}, STORED,
     0.0, 50.0, set(), Cause.RESYNC, R1, None),
    ("pinned but not stored", {**ONLINE, "pinnedRevision": 7}, {}, STORED,
     0.0, 0.0, set(), Cause.INVALID_PIN, None, None),
    ("pinned and in service: hold", {**ONLINE, "pinnedRevision": 1},
     {"currentRevision": "ds-1"}, STORED, 100.0, 0.0, set(), Cause.PINNED, R1, None),
    ("pinned placement equal to current: hold current", {**ONLINE, "pinnedRevision": 1},
     {"currentRevision": "ds-3"}, [*STORED, R3], 100.0, 0.0, set(), Cause.PINNED, R3, None),
    ("pinned older revision: roll back", {**OFFLINE, "pinnedRevision": 1},
     {"currentRevision": "ds-2"}, STORED, 100.0, 0.0, set(), Cause.ROLLBACK, None, R1),
    ("offline mapping to check", {**ONLINE, **OFFLINE}, {"currentRevision": "ds-1"}, STORED,
     100.0, 0.0, set(), Cause.OFFLINE, None, None),
    ("offline checked, nothing new, no online: re-sync", OFFLINE,
     {"currentRevision": "ds-1"}, STORED, 100.0, 0.0, {Cause.OFFLINE}, Cause.RESYNC, R1, None),
    ("offline checked, online due", {**ONLINE, **OFFLINE}, {}, STORED, 100.0, 50.0,
     {Cause.OFFLINE}, Cause.ONLINE_DUE, None, None),
    ("online due by the interval", ONLINE, {"currentRevision": "ds-1"}, STORED,
     100.0, 100.0, set(), Cause.ONLINE_DUE, None, None),
    ("online not due yet: re-sync", ONLINE, {"currentRevision": "ds-1"}, STORED,
     99.0, 100.0, set(), Cause.RESYNC, R1, None),
    ("a new rebalance.id, not due", {**ONLINE, "rebalance": {"id": "b"}},
     {"observedRebalanceId": "a"}, STORED, 0.0, 100.0, set(), Cause.REBALANCE_REQUESTED,
     None, None),
    ("rebalance.id already observed, not due", {**ONLINE, "rebalance": {"id": "a"}},
     {"observedRebalanceId": "a"}, [], 0.0, 100.0, set(), Cause.NOTHING, None, None),
    ("online planned nothing new: re-sync", ONLINE, {"currentRevision": "ds-2"}, STORED,
     100.0, 0.0, {Cause.ONLINE_DUE}, Cause.RESYNC, R2, None),
    ("nothing stored, nothing due: start-up placement", ONLINE, {}, [],
     0.0, 100.0, set(), Cause.NOTHING, None, None),
]
# fmt: on


@pytest.mark.parametrize(
    ("changes", "status", "revisions", "now", "next_online", "checked", "cause", "target",
     "pinned"),
    [case[1:] for case in CASES], ids=[case[0] for case in CASES],
)  # fmt: skip
def test_decide(
    changes: dict[str, Any], status: dict[str, Any], revisions: list[Revision], now: float,
    next_online: float, checked: set[Cause], cause: Cause, target: Revision | None,
    pinned: Revision | None,
) -> None:  # fmt: skip
    decision = decide(spec(**changes), status, pods(START, START), revisions, now, name=NAME,
                      next_online=next_online, checked=frozenset(checked))  # fmt: skip
    assert (decision.cause, decision.target, decision.pinned) == (cause, target, pinned)
    assert bool(decision.message) == (cause == Cause.INVALID_PIN)


def test_every_cause_is_covered() -> None:
    assert {case[7] for case in CASES} == set(Cause)


def test_users_see_the_causes_they_saw_as_strings() -> None:
    shown = {cause: cause.shown for cause in Cause if cause not in (Cause.INVALID_PIN,
                                                                     Cause.NOTHING)}  # fmt: skip
    assert shown == {Cause.CONTINUE: "continue", Cause.PINNED: "rollback",
                     Cause.ROLLBACK: "rollback", Cause.OFFLINE: "offline",
                     Cause.REBALANCE_REQUESTED: "online", Cause.ONLINE_DUE: "online",
                     Cause.RESYNC: "resync"}  # fmt: skip


# (id, pods serve, cause, now, retry_after, action)
# fmt: off
GATES = [
    ("every pod serves the target", (OTHER, OTHER), Cause.RESYNC, 0.0, 0.0, Action.IN_SERVICE),
    ("one pod differs", (OTHER, START), Cause.RESYNC, 0.0, 0.0, Action.ROLL_OUT),
    ("just aborted: back off", (START, START), Cause.OFFLINE, 5.0, 10.0, Action.BACK_OFF),
    ("just aborted, a fresh online plan goes", (START, START), Cause.ONLINE_DUE, 5.0, 10.0,
     Action.ROLL_OUT),
    ("back-off over", (START, START), Cause.CONTINUE, 10.0, 10.0, Action.ROLL_OUT),
    ("in service wins over back-off", (OTHER, OTHER), Cause.OFFLINE, 5.0, 10.0,
     Action.IN_SERVICE),
]
# fmt: on


@pytest.mark.parametrize(("served", "cause", "now", "retry_after", "action"),
                         [g[1:] for g in GATES], ids=[g[0] for g in GATES])  # fmt: skip
def test_gate(
    served: tuple[torch.Tensor, ...], cause: Cause, now: float, retry_after: float,
    action: Action,
) -> None:  # fmt: skip
    assert gate(R2, cause, pods(*served), now, retry_after) == action


def test_every_action_is_covered() -> None:
    assert {g[5] for g in GATES} == set(Action)
