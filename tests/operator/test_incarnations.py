"""An ExpertPlacement deleted and created again over the same pods: the new incarnation's
revisions start above what the pods serve, so its rollout is not refused as older."""

from __future__ import annotations

import pytest

from eplb_local.world import World

from .conftest import (
    APP,
    apply_offline,
    assert_invariants,
    mapping_json,
    new_target,
    planned,
    rolled_out,
    served_revision,
    serves,
    spec,
)

pytestmark = pytest.mark.slow


def test_a_placement_deleted_and_created_again_rolls_out(reused_world: World) -> None:
    world = reused_world
    expected = world.probe()
    first = new_target(world, 19)
    apply_offline(world, first)
    world.wait(lambda: rolled_out(world), 90, "the first rollout")
    api = world.kube.api_checked()
    api.checked("DELETE", f"{world.xpl}/{APP}")
    world.wait(lambda: api.get(f"{world.xpl}/{APP}").code == 404, 60, "the deletion")
    # Owned by the placement: the garbage collector removes its revisions with it.
    world.wait(lambda: world.revisions() == [], 60, "the garbage collector")
    assert serves(world, first)  # the pods keep serving what they had
    serving = served_revision(world)

    second = planned(seed=9, previous=first)
    configmap = f"/api/v1/namespaces/{world.namespace}/configmaps/moe-mapping"
    api.checked("PATCH", configmap, {"data": {"placement.json": mapping_json(second)}},
                "application/merge-patch+json")  # fmt: skip
    api.checked("POST", world.xpl, spec(offline={"configMapRef": {"name": "moe-mapping"}}))
    # The status is written after the last commit: wait for both.
    world.wait(lambda: serves(world, second) and rolled_out(world), 90,
               "the new incarnation's rollout")  # fmt: skip
    revision = world.status()["currentRevision"]
    assert revision == f"moe-{serving + 1}", revision  # above what the pods served
    assert_invariants(world, expected)
