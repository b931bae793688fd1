"""The chart's RBAC is exactly what the operator uses: derived from a real run's requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eplb_operator.cluster.access import Access
from eplb_operator.controller.kube import USER_AGENT
from tests.operator.conftest import (
    NAMESPACE,
    World,
    apply_offline,
    build_world,
    mapping_json,
    planned,
    restart_when_dead,
)

from .test_chart import by_kind, render

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from build_world(tmp_path, with_prometheus=False)


def granted(rules: list[dict[str, list[str]]]) -> set[Access]:
    return {
        Access(group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_cluster_role_grants_exactly_what_a_real_operator_run_used(world: World) -> None:
    first = planned(seed=3)
    apply_offline(world, first, rollout={"layersPerStep": 2, "revisionHistoryLimit": 0})
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 60, "first rollout")
    # The next commit kills one sidecar: the operator retries it and checks the pod is alive.
    victim = world.group.pods[2]
    world.group.kill(victim, "sidecar")
    world.group.start_sidecar(victim, env={"EPLB_SIDECAR_FAULT": "exit-at-commit"})
    world.group.wait_ready()
    supervisor = restart_when_dead(world, victim)
    second = first.clone()
    second[0] = first[1]
    world.api.merge(  # a new mapping: a new revision, and the old one pruned
        f"/api/v1/namespaces/{NAMESPACE}/configmaps/moe-mapping",
        {"data": {"placement.json": mapping_json(second)}},
    )
    world.wait(lambda: world.status().get("currentRevision") == "moe-2", 60, "second rollout")
    world.wait(lambda: len(world.revisions()) == 1, 30, "pruning")
    supervisor.join(10)
    world.operator.stop()

    used = {
        access
        for agent, access in world.cluster.emulator.accesses
        if agent.startswith(("kopf/", USER_AGENT.split("/")[0] + "/"))
    }
    role = by_kind(render(), "ClusterRole")[0]
    assert granted(role["rules"]) == used, (
        f"granted but unused: {sorted(granted(role['rules']) - used)}; "
        f"used but not granted: {sorted(used - granted(role['rules']))}"
    )
    namespaced = by_kind(render("--set", "operator.watchNamespace=serving"), "Role")[0]
    assert granted(namespaced["rules"]) == used
