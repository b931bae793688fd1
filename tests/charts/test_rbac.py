"""The chart's RBAC is exactly what the operator uses — read off the real API server's audit
log of a real operator run under the chart's ServiceAccount — and a permission taken away is
reported as a condition and an Event, not a crash loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eplb_local.kube.audit import Access, accesses, denied
from eplb_local.world import LocalKube, World
from tests.operator.conftest import apply_offline, build_world, mapping_json, planned
from tests.restart.rbac import RESTART_ACCESSES

from .test_chart import by_kind, release_objects, render

pytestmark = pytest.mark.slow
ACCOUNT = "eplb-eplb-operator"  # the chart's ServiceAccount for the release `eplb`
# Granted, never requested: what the sidecars' SubjectAccessReview asks of their caller
# (tests/operator/test_sidecar_auth checks that a caller without it is refused).
SIDECAR_ACCESSES = {Access("eplb.io", "expertplacements/rollout", "update")}


@pytest.fixture
def world(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[World]:
    yield from build_world(kube, tmp_path, namespace, with_prometheus=False)


def granted(rules: list[dict[str, list[str]]]) -> set[Access]:
    return {
        Access(group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def live_rules(world: World) -> set[Access]:
    """The rules the chart installed for this release: its Role and its ClusterRole."""
    api = world.kube.api_checked()
    ns = world.namespace
    role = api.checked("GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{ACCOUNT}")
    crds = api.checked(
        "GET", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{ACCOUNT}-{ns}-cluster"
    )
    lease = api.checked(
        "GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{ACCOUNT}-leader-election"
    )
    return granted(role["rules"]) | granted(crds["rules"]) | granted(lease["rules"])


def test_the_role_grants_exactly_what_a_real_operator_run_used(world: World) -> None:
    first = planned(seed=3)
    apply_offline(world, first, rollout={"layersPerStep": 2, "revisionHistoryLimit": 0})
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 60, "first rollout")
    # The next commit kills one sidecar: the operator retries it and checks the pod is alive.
    world.inject(world.pod(2), "exit-at-commit")
    second = first.clone()
    second[0] = first[1]
    world.kube.api_checked().merge(  # a new mapping: a new revision, and the old one pruned
        f"/api/v1/namespaces/{world.namespace}/configmaps/moe-mapping",
        {"data": {"placement.json": mapping_json(second)}},
    )
    world.wait(lambda: world.status().get("currentRevision") == "moe-2", 60, "second rollout")
    world.wait(lambda: len(world.revisions()) == 1, 30, "pruning")
    world.scale_operator(0)

    assert world.kube.plane is not None
    username = f"system:serviceaccount:{world.namespace}:{ACCOUNT}"
    used = accesses(world.kube.plane.audit_log, username)
    # Restart rollouts' rights (workloads, start-up file ConfigMaps): tests/restart uses them.
    installed = live_rules(world) - RESTART_ACCESSES - SIDECAR_ACCESSES
    used -= RESTART_ACCESSES
    assert installed == used, (
        f"granted but unused: {sorted(installed - used)}; "
        f"used but not granted: {sorted(used - installed)}"
    )
    assert not denied(world.kube.plane.audit_log, username)
    # What `helm template` renders is what was installed and used; cluster-wide, the one
    # difference is that kopf needs no namespace list to find every namespace.
    # The leader-election Role is the same either way (in the release namespace).
    everywhere = release_objects(render())
    cluster_wide = by_kind(everywhere, "ClusterRole")[0]
    (lease_role,) = by_kind(everywhere, "Role")
    cluster_wide_used = {a for a in used if a.resource != "namespaces"}
    granted_everywhere = granted(cluster_wide["rules"]) | granted(lease_role["rules"])
    assert granted_everywhere - RESTART_ACCESSES - SIDECAR_ACCESSES == cluster_wide_used
    namespaced = release_objects(render("--set", "operator.watchNamespaces={serving}"))
    rendered = {a for doc in by_kind(namespaced, "Role") + by_kind(namespaced, "ClusterRole")
                for a in granted(doc["rules"])}  # fmt: skip
    assert rendered - RESTART_ACCESSES - SIDECAR_ACCESSES == used
    assert not any(a.resource == "secrets" for a in used | rendered)  # the operator reads none


def test_a_permission_taken_away_is_a_condition_and_an_event_not_a_crash(world: World) -> None:
    api = world.kube.api_checked()
    path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{world.namespace}/roles/{ACCOUNT}"
    role = api.checked("GET", path)
    without: list[dict[str, Any]] = [  # no listing of pods
        dict(rule, verbs=[v for v in rule["verbs"] if v != "list"])
        if rule["resources"] == ["pods"] else rule
        for rule in role["rules"]
    ]  # fmt: skip
    api.checked("PUT", path, dict(role, rules=without))
    apply_offline(world, planned(seed=3))

    def forbidden() -> bool:
        return world.condition("Degraded").get("reason") == "Forbidden"

    world.wait(forbidden, 60, "Degraded/Forbidden")
    message = world.condition("Degraded")["message"]
    assert "403" in message and "pods" in message and "list" in message, message
    events = [e for e in world.events() if e.get("reason") == "Forbidden"]
    assert events and events[0]["type"] == "Warning"
    assert world.restarts(world.operator_pod()["metadata"]["name"], "operator") == 0
    # Given back, the placement rolls out; the operator never restarted.
    api.checked("PUT", path, dict(api.checked("GET", path), rules=role["rules"]))
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 120, "the rollout")
    assert world.condition("Degraded")["status"] == "False"
