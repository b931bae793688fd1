"""The operator against the API server's own faults: a restart that breaks every watch
(and answers the resumed ones 410 Gone), seen through the server's audit log."""

from __future__ import annotations

import pytest

from eplb_local.kube.audit import requests
from eplb_local.world import World

from .conftest import APP, apply_offline, assert_invariants, new_target, rolled_out, serves, spec

pytestmark = pytest.mark.slow
ACCOUNT = "eplb-eplb-operator"


def test_an_api_server_restart_and_410_gone_are_survived(reused_world: World) -> None:
    world = reused_world
    assert world.kube.plane is not None
    expected = world.probe()
    target = new_target(world, 3)
    apply_offline(world, target)
    world.wait(lambda: rolled_out(world), 90, "the rollout")
    revision = world.status()["currentRevision"]
    operator = world.operator_pod()["metadata"]["name"]
    restarted = world.restarts(operator, "operator")
    username = f"system:serviceaccount:{world.namespace}:{ACCOUNT}"
    audit = world.kube.plane.audit_log

    def lists_of_placements() -> int:
        return sum(
            1
            for access, code in requests(audit, username)
            if access.resource == "expertplacements" and access.verb == "list" and code == 200
        )

    before = lists_of_placements()
    world.kube.plane.restart_apiserver()
    # The watch the operator resumes from its last resourceVersion is too old for the new
    # server's watch cache: 410 Gone, and kopf lists again (and never crashes).
    world.wait(lambda: lists_of_placements() > before, 90, "the operator to list again")
    # A new object is seen only through a working watch: its daemon starts and writes.
    other = spec(selector={"matchLabels": {"app": "nothing-here"}}, online={})
    other["metadata"]["name"] = "other"
    world.kube.api_checked().checked("POST", world.xpl, other)
    world.wait(
        lambda: world.condition("Degraded", "other").get("reason") == "PodsInconsistent",
        60,
        "the new placement to be reconciled",
    )
    assert serves(world, target) and world.status(APP)["currentRevision"] == revision
    # Never a crash.  An outage longer than the Lease's renew deadline (10 s; the restart
    # takes longer on a busy machine) makes the leader give up and come back as a candidate,
    # as client-go's controllers do: a restart follows a lost Lease, said in the log.
    restarts = world.restarts(operator, "operator") - restarted
    assert restarts == 0 or "leadership lost" in world.operator_log(), world.operator_log()[-3000:]
    assert_invariants(world, expected)
