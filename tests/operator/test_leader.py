"""Two operator replicas from the chart on the real API server: the one holding the Lease
acts, the other only tries the Lease; a leader whose Lease is taken stops acting; when the
leader's pod is deleted the other takes over and rolls out what is applied next.  Who acted
when is read off the API server's audit log (each request names the pod whose bound
ServiceAccount token made it)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from eplb_local.world import LocalKube, World
from eplb_local.world.world import OPERATOR_ACCOUNT, OPERATOR_LEASE
from tests.conftest import unique_namespace

from .conftest import CONFIG, apply_offline, assert_invariants, mapping_json, planned, serves

pytestmark = pytest.mark.slow
LEASE, RENEW, RETRY = 8, 5, 1  # seconds; short, so that the test is
TWO_REPLICAS = {
    "operator": {
        "replicaCount": 2,
        "leaderElection": {"leaseDurationSeconds": LEASE, "renewDeadlineSeconds": RENEW,
                           "retryPeriodSeconds": RETRY},
    }
}  # fmt: skip
WRITES = {"create", "update", "patch", "delete"}


@pytest.fixture(scope="module")
def world(kube: LocalKube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for the module: its tests go on from one another's state."""
    world = World(kube, unique_namespace(), tmp_path_factory.mktemp("leader"), CONFIG,
                  operator_values=TWO_REPLICAS)  # fmt: skip
    with world.running():
        yield world


def ready_operators(world: World) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in world.operator_pods()
        if "deletionTimestamp" not in p["metadata"] and world._ready(p)
    )


def operator(world: World, name: str) -> dict[str, Any]:
    return next(p for p in world.operator_pods() if p["metadata"]["name"] == name)


def writes(world: World) -> list[tuple[datetime, str, str]]:
    """(time, pod, resource) of each write the operator's ServiceAccount made, the Lease's
    excepted: what acting is (status, revisions, finalizers, Events)."""
    assert world.kube.plane is not None
    username = f"system:serviceaccount:{world.namespace}:{OPERATOR_ACCOUNT}"
    found = []
    for line in world.kube.plane.audit_log.read_text().splitlines():
        event = json.loads(line)
        user, ref = event.get("user", {}), event.get("objectRef") or {}
        if user.get("username") != username or event.get("verb") not in WRITES:
            continue
        if ref.get("resource") == "leases" or event.get("stage") != "ResponseComplete":
            continue
        pod = (user.get("extra") or {}).get("authentication.kubernetes.io/pod-name", ["?"])[0]
        when = datetime.fromisoformat(event["requestReceivedTimestamp"])
        found.append((when, pod, ref["resource"] + "/" + ref.get("subresource", "")))
    return found


def leader_metric(world: World, name: str) -> float:
    for line in world.operator_metrics(operator(world, name)).splitlines():
        if line.startswith("eplb_operator_leader "):
            return float(line.split()[1])
    raise AssertionError(f"no eplb_operator_leader in {name}'s metrics")


def change_mapping(world: World, seed: int) -> Any:
    previous = serving(world)
    target = planned(seed=seed, previous=previous)
    world.kube.api_checked().merge(
        f"/api/v1/namespaces/{world.namespace}/configmaps/moe-mapping",
        {"data": {"placement.json": mapping_json(target)}},
    )
    return target


def serving(world: World) -> Any:
    return world.tables()[0].routing.clone()


def test_one_replica_holds_the_lease_and_acts_the_other_stands_by(world: World) -> None:
    world.wait(lambda: len(ready_operators(world)) == 2, 300, "two operator pods")
    world.wait(lambda: world.operator_leader() in ready_operators(world), 60, "a leader")
    leader = world.operator_leader()
    assert leader is not None
    (follower,) = [name for name in ready_operators(world) if name != leader]
    expected = world.probe()
    target = planned(seed=3)
    apply_offline(world, target)
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 120, "the rollout")
    assert serves(world, target)
    assert_invariants(world, expected)
    actors = {pod for _, pod, _ in writes(world)}
    if world.operator_leader() == leader and world.restarts(leader, "operator") == 0:
        # The follower wrote nothing but the Lease.  (On a machine so loaded that renewals
        # miss the deadline the Lease may move meanwhile: then both have acted, in turn.)
        assert actors == {leader}, actors
    assert leader_metric(world, leader) == 1 and leader_metric(world, follower) == 0
    assert f"{follower}: following {leader}" in world.operator_log(follower)
    assert f"{leader}: leading" in world.operator_log(leader)


def test_a_leader_whose_lease_is_taken_stops_acting_and_the_other_acts(world: World) -> None:
    old = world.operator_leader()
    assert old is not None
    (new,) = [name for name in ready_operators(world) if name != old]
    restarts = world.restarts(old, "operator")
    path = f"/apis/coordination.k8s.io/v1/namespaces/{world.namespace}/leases/{OPERATOR_LEASE}"
    api = world.kube.api_checked()
    for _ in range(10):  # the leader renews every 2 s: a renewal between our read and write
        lease = api.checked("GET", path)
        lease["spec"]["holderIdentity"] = new  # the Lease is the new one's now
        reply = api.put(path, lease)
        if reply.code != 409:
            break
    assert reply.code == 200, reply.body
    taken = datetime.now().astimezone()
    # The old leader sees it at its next renewal, stops kopf at once and exits, to come back
    # as a follower (its container restarts); the new one renews what it now holds.
    world.wait(lambda: world.restarts(old, "operator") > restarts, 60, "the old to exit")
    assert "stopped acting; exiting to follow again" in world.operator_log(old)
    assert f"{old}: Lease {world.namespace}/{OPERATOR_LEASE} taken by {new}" in (
        world.operator_log(old)
    )
    assert world.operator_leader() == new
    assert leader_metric(world, new) == 1
    expected = world.probe()
    target = change_mapping(world, seed=9)
    world.wait(lambda: world.status().get("currentRevision") == "moe-2", 120, "the rollout")
    assert serves(world, target)
    assert_invariants(world, expected)
    late = [(when, what) for when, pod, what in writes(world)
            if pod == old and (when - taken).total_seconds() > RENEW + 1]  # fmt: skip
    assert late == [], late  # stopped within the renew deadline (at its next renewal, mostly)
    assert any(pod == new and when > taken for when, pod, _ in writes(world))


def test_the_leader_pod_deleted_the_other_takes_over_and_rolls_out(world: World) -> None:
    world.wait(lambda: len(ready_operators(world)) == 2, 300, "two operator pods again")
    old = world.operator_leader()
    assert old is not None
    (other,) = [name for name in ready_operators(world) if name != old]
    deleted = datetime.now().astimezone()
    started = time.monotonic()
    world.kube.kubectl_checked("delete", "pod", "-n", world.namespace, old, "--wait=false")
    # It stops kopf (taking its finalizers off) and gives the Lease up: the other takes over
    # at its next retry, well within the lease duration.
    world.wait(lambda: world.operator_leader() == other, 60, "the other to lead")
    took = time.monotonic() - started
    assert f"{old}: gave up Lease" in world.operator_log(old)
    expected = world.probe()
    target = change_mapping(world, seed=21)
    world.wait(lambda: world.status().get("currentRevision") == "moe-3", 120, "the rollout")
    assert serves(world, target)
    assert_invariants(world, expected)
    # Never both at once: the old leader's last write comes before the new one's first.
    recent = [(when, pod) for when, pod, _ in writes(world) if when > deleted]
    old_last = max((when for when, pod in recent if pod == old), default=deleted)
    new_first = min(when for when, pod in recent if pod == other)
    assert old_last < new_first, recent
    assert leader_metric(world, other) == 1
    # kopf's graceful stop, then a retry period; not the lease duration's wait of a crash.
    assert took < 30, took
    print(f"took over {took:.1f} s after the delete (lease duration {LEASE} s)")
