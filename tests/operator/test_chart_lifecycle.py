"""The operator's chart on the real API server: an upgrade restarts the operator and the
placement it serves stays served; ``helm uninstall`` (the CRD is kept) leaves no
ExpertPlacement stuck on the operator's finalizer."""

from __future__ import annotations

from typing import Any

import pytest

from eplb_local.world import World
from eplb_local.world.world import OPERATOR_RELEASE

from .conftest import APP, apply_offline, planned, serves

pytestmark = pytest.mark.slow
FINALIZER = "eplb.io/operator"


def placement(world: World) -> dict[str, Any] | None:
    reply = world.kube.api_checked().get(f"{world.xpl}/{APP}")
    return None if reply.code == 404 else dict(reply.body)


def finalizers(world: World) -> list[str]:
    body = placement(world)
    return [] if body is None else list(body["metadata"].get("finalizers", []))


def test_upgrade_keeps_serving_and_uninstall_leaves_no_placement_stuck(world: World) -> None:
    target = planned(seed=11)
    apply_offline(world, target)
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 120, "the rollout")
    assert FINALIZER in finalizers(world)
    before = world.operator_pod()["metadata"]["name"]

    # Upgrade with a changed value: a new operator pod takes the placement over (rolled: it
    # leads once the old one has stopped and given the Lease up).
    world.install_operator(operator={"recheckSeconds": 2})
    world.wait(
        lambda: any(
            p["metadata"]["name"] != before and world._ready(p) for p in world.operator_pods()
        ),
        600,
        "the upgraded operator",
    )
    world.wait(lambda: FINALIZER in finalizers(world), 60, "the new operator's finalizer")
    assert world.status().get("currentRevision") == "moe-1" and serves(world, target)

    world.kube.helm_checked("uninstall", OPERATOR_RELEASE, "--namespace", world.namespace,
                            "--wait", "--timeout=300s")  # fmt: skip
    assert not world.operator_pods()
    # The placement stays (with its status), without a finalizer nobody would remove.
    assert finalizers(world) == [] and placement(world) is not None
    assert world.kube.api_checked().delete(f"{world.xpl}/{APP}").code == 200
    world.wait(lambda: placement(world) is None, 30, "the placement to be deleted")
    assert serves(world, target)  # the pods keep serving what was rolled out
