"""The issue's "Done when": a StatefulSet per EP group of stand-in SGLang pods, started from
``--init-expert-location`` in the operator's ConfigMap, rebalanced by a Restart rollout from
the load in SGLang's recorder dumps (read by the sidecars, through Prometheus), one group
at a time: never fewer than N−1 groups serving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eplb_core.placements import start_up_placement
from eplb_local.kube.audit import Access, accesses, denied
from eplb_local.standin.world import StandinWorld
from eplb_local.world import LocalKube
from eplb_operator.placement.views import balancedness

from .conftest import (
    EXPERTS,
    GROUPS,
    LAYER_IDS,
    RANKS,
    REDUNDANT,
    CapacityWatch,
    build_world,
    event_reasons,
    placement_of,
    restart_spec,
    revision_data,
)
from .rbac import RESTART_ACCESSES

pytestmark = pytest.mark.slow
KEY = "init-expert-location.json"


@pytest.fixture
def world(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[StandinWorld]:
    spec = restart_spec("sglang", "StatefulSet", rollout={
        "strategy": "Restart", "minIntervalSeconds": 3600, "progressDeadlineSeconds": 120,
        "revisionHistoryLimit": 0, "paused": True})  # fmt: skip
    yield from build_world(kube, tmp_path, namespace, "sglang", "StatefulSet", spec,
                           with_prometheus=True)  # fmt: skip


def rows(text: str) -> torch.Tensor:
    """The MoE layers' rows of an --init-expert-location map."""
    return torch.tensor(json.loads(text)["physical_to_logical_map"])[LAYER_IDS]


def test_sglang_groups_restart_one_at_a_time_onto_a_placement_from_their_dumps(
    world: StandinWorld,
) -> None:
    # Paused: the pods started from revision 0, the start-up placement (slot p, expert p mod E).
    start = torch.from_numpy(start_up_placement(len(LAYER_IDS), EXPERTS + REDUNDANT, EXPERTS))
    world.wait(lambda: world.condition("Progressing").get("reason") == "Paused", 30, "paused")
    for pods in world.group_pods().values():
        for pod in pods:
            assert torch.equal(rows(world.mounted_file(pod, KEY)), start)
    assert world.served_revisions() == {"0": {"0"}, "1": {"0"}}

    watch = CapacityWatch(world, {str(g): RANKS for g in range(GROUPS)})
    watch.start()
    assert world.prometheus is not None
    unpause = {"rollout": {"paused": False}, "metrics": {"prometheusUrl": world.prometheus.url}}
    world.kube.api_checked().merge(f"{world.xpl}/moe", {"spec": unpause})
    began = time.monotonic()
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 150, "the rollout")
    print(f"rollout took {time.monotonic() - began:.1f} s")
    watch.finish()

    # Capacity: at every moment at least N-1 of the N groups had every pod Ready, and the
    # groups went down one after the other (group 0 back before group 1 went).
    assert watch.fewest_whole_groups() >= GROUPS - 1
    first, second = (watch.first_dip(str(g)) for g in range(GROUPS))
    assert first is not None and second is not None, "both groups restarted"
    assert watch.last_dip("0") is not None and watch.last_dip("0") < second  # type: ignore[operator]

    # Every pod restarted onto revision 1: its file is the revision's placement, in SGLang's
    # format (a row per hidden layer, dense ones at the start-up placement).
    target = placement_of(world, "moe-1")
    assert not torch.equal(target, start)
    assert world.served_revisions() == {"0": {"1"}, "1": {"1"}}
    for pods in world.group_pods().values():
        for pod in pods:
            text = world.mounted_file(pod, KEY)
            assert torch.equal(rows(text), target)
            assert len(json.loads(text)["physical_to_logical_map"]) == 6
    status = world.status()
    assert [(g["name"], g["revision"], g["readyPods"]) for g in status["groups"]] == [
        ("0", "moe-1", RANKS), ("1", "moe-1", RANKS)]  # fmt: skip
    assert world.condition("Ready")["status"] == "True"

    # The plan came from the dumps: the load of the engines' skewed stream, and it balances
    # the ranks better than the start-up placement did.
    load = torch.tensor(revision_data(world, "moe-1")["load"])
    assert load.shape == (len(LAYER_IDS), EXPERTS) and bool((load > 0).all())
    hot = load.argmax(dim=1)
    assert len(set(hot.tolist())) > 1, "each layer has its own hot experts"
    before = balancedness(load, start, RANKS).mean()
    after = balancedness(load, target, RANKS).mean()
    assert after > before + 0.05, (float(before), float(after))
    assert status["lastRebalance"]["predictedBalancedness"] == pytest.approx(float(after), abs=0.01)

    # Events: the rollout, then each group restarting and coming back, in order.
    reasons = [(r, m) for r, m in event_reasons(world) if r.startswith(("Rollout", "Group"))]
    group_events = ["GroupRestarting", "GroupRestarted"] * GROUPS
    assert [r for r, _ in reasons] == ["RolloutStarted", *group_events, "RolloutComplete"]
    assert "group 0" in reasons[1][1] and "StatefulSet moe-0" in reasons[1][1]
    assert "group 1" in reasons[3][1]

    # Least privilege: what the run used of the Restart rights, nothing refused.
    assert world.kube.plane is not None
    user = f"system:serviceaccount:{world.namespace}:eplb-eplb-operator"
    used = accesses(world.kube.plane.audit_log, user)
    restart_verbs = {a for a in used if a.resource in ("statefulsets", "configmaps")}
    others = ("deployments", "leaderworkersets")  # kinds of the other tests
    assert {a for a in RESTART_ACCESSES if a.verb != "delete" and a.resource not in others
            } <= restart_verbs <= RESTART_ACCESSES | {Access("", "configmaps", "get")}  # fmt: skip
    assert not denied(world.kube.plane.audit_log, user)
