"""A Restart rollout of a LeaderWorkerSet: stand-in SGLang engines in one LeaderWorkerSet
``moe`` of two groups (EP groups) of two pods (a pod a rank: the leader is rank 0, its
worker rank 1), made and labelled by the real LWS controller. The operator reads each pod's
group and rank off those labels (``rankFrom: LeaderWorkerSet``), stamps the LeaderWorkerSet's
templates, and admits one group at a time to the LWS controller's rolling update through its
partition — the next only once the one before has every pod Ready (the LWS controller's own
maxUnavailable counts a group back as soon as its workers' pods exist: with it alone both
groups were seen down at once here). Never fewer than N−1 groups serving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from eplb_core.placements import start_up_placement
from eplb_local.kube.audit import Access, accesses, denied
from eplb_local.standin.world import StandinWorld
from eplb_local.world import LocalKube
from eplb_operator.controller.restart_files import VOLUME, config_map_name

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
)

pytestmark = pytest.mark.slow
KEY = "init-expert-location.json"
LWS = "moe"  # the serving release's LeaderWorkerSet


@pytest.fixture
def world(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[StandinWorld]:
    spec = restart_spec(
        "sglang", "LeaderWorkerSet",
        workloadRef={"kind": "LeaderWorkerSet", "name": LWS},
        pods={"rankFrom": "LeaderWorkerSet"},
        rollout={"strategy": "Restart", "minIntervalSeconds": 3600,
                 "progressDeadlineSeconds": 120, "revisionHistoryLimit": 0, "paused": True},
    )  # fmt: skip
    yield from build_world(kube, tmp_path, namespace, "sglang", "LeaderWorkerSet", spec,
                           with_prometheus=True)  # fmt: skip


def lws_path(world: StandinWorld) -> str:
    return f"/apis/leaderworkerset.x-k8s.io/v1/namespaces/{world.namespace}/leaderworkersets/{LWS}"


def worker_template(world: StandinWorld) -> dict[str, Any]:
    found = world.kube.api_checked().checked("GET", lws_path(world))
    return dict(found["spec"]["leaderWorkerTemplate"]["workerTemplate"])


def rows(text: str) -> torch.Tensor:
    """The MoE layers' rows of an --init-expert-location map."""
    return torch.tensor(json.loads(text)["physical_to_logical_map"])[LAYER_IDS]


def test_leaderworkerset_groups_restart_one_at_a_time_by_its_own_rolling_update(
    world: StandinWorld,
) -> None:
    api = world.kube.api_checked()
    world.wait(lambda: world.condition("Progressing").get("reason") == "Paused", 30, "paused")
    # The LWS controller made the groups: leader <lws>-<group>, worker <lws>-<group>-1.
    names = sorted(p["metadata"]["name"] for pods in world.group_pods().values() for p in pods)
    assert names == ["moe-0", "moe-0-1", "moe-1", "moe-1-1"]
    start = torch.from_numpy(start_up_placement(len(LAYER_IDS), EXPERTS + REDUNDANT, EXPERTS))
    for pods in world.group_pods().values():
        for pod in pods:
            assert torch.equal(rows(world.mounted_file(pod, KEY)), start)
    assert world.served_revisions() == {"0": {"0"}, "1": {"0"}}

    # A rolling update with surge groups, which the placement cannot count: refused.
    rolling = {"spec": {"rolloutStrategy": {"rollingUpdateConfiguration": {"maxSurge": 1}}}}
    api.merge(lws_path(world), rolling)
    assert world.prometheus is not None
    unpause = {"rollout": {"paused": False}, "metrics": {"prometheusUrl": world.prometheus.url}}
    api.merge(f"{world.xpl}/moe", {"spec": unpause})
    world.wait(lambda: world.condition("Degraded").get("reason") == "InvalidSpec", 60,
               "the refusal")  # fmt: skip
    message = world.condition("Degraded")["message"]
    assert "LeaderWorkerSet moe: maxSurge 1 adds groups" in message, message
    assert "eplb.io/placement-revision" not in (worker_template(world)["metadata"].get(
        "annotations") or {})  # fmt: skip
    assert world.revisions() == []

    watch = CapacityWatch(world, {str(g): RANKS for g in range(GROUPS)})
    watch.start()
    # No surge, and a maxUnavailable that would let the LWS controller take both groups:
    # the partition paces them all the same.
    rolling["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] = {
        "maxSurge": 0, "maxUnavailable": 2}  # fmt: skip
    api.merge(lws_path(world), rolling)
    began = time.monotonic()
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 240, "the rollout")
    print(f"rollout took {time.monotonic() - began:.1f} s")
    watch.finish()

    # Capacity: at every moment at least N-1 of the N groups had every pod Ready, and the
    # groups went down one after the other, the highest index first.
    assert watch.fewest_whole_groups() >= GROUPS - 1
    first, second = watch.first_dip("1"), watch.first_dip("0")
    assert first is not None and second is not None, "both groups restarted"
    assert watch.last_dip("1") is not None and watch.last_dip("1") < second  # type: ignore[operator]

    # The LeaderWorkerSet's templates carry revision 1 and its ConfigMap, its partition is
    # back at 0; every pod restarted onto it, its file the revision's placement in SGLang's
    # format.
    found = api.checked("GET", lws_path(world))
    assert found["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["partition"] == 0
    template = worker_template(world)
    assert template["metadata"]["annotations"]["eplb.io/placement-revision"] == "1"
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == VOLUME)
    assert volume["configMap"]["name"] == config_map_name("moe", 1)
    target = placement_of(world, "moe-1")
    assert not torch.equal(target, start)
    assert world.served_revisions() == {"0": {"1"}, "1": {"1"}}
    for pods in world.group_pods().values():
        for pod in pods:
            assert torch.equal(rows(world.mounted_file(pod, KEY)), target)
    status = world.status()
    assert [(g["name"], g["revision"], g["readyPods"]) for g in status["groups"]] == [
        ("moe-0", "moe-1", RANKS), ("moe-1", "moe-1", RANKS)]  # fmt: skip
    assert world.condition("Ready")["status"] == "True"

    # Events: the rollout, then each group restarting and coming back, the highest first.
    reasons = [(r, m) for r, m in event_reasons(world) if r.startswith(("Rollout", "Group"))]
    group_events = ["GroupRestarting", "GroupRestarted"] * GROUPS
    assert [r for r, _ in reasons] == ["RolloutStarted", *group_events, "RolloutComplete"]
    assert "group moe-1 (LeaderWorkerSet moe, partition 1)" in reasons[1][1], reasons[1][1]
    assert "group moe-0 (LeaderWorkerSet moe, partition 0)" in reasons[3][1], reasons[3][1]

    # Least privilege: the LeaderWorkerSet read and patched, nothing refused.
    assert world.kube.plane is not None
    user = f"system:serviceaccount:{world.namespace}:eplb-eplb-operator"
    used = accesses(world.kube.plane.audit_log, user)
    assert {a for a in used if a.resource == "leaderworkersets"} == {
        Access("leaderworkerset.x-k8s.io", "leaderworkersets", "get"),
        Access("leaderworkerset.x-k8s.io", "leaderworkersets", "patch"),
    }
    assert not any(a.resource in ("statefulsets", "deployments") for a in used)
    assert not denied(world.kube.plane.audit_log, user)
