"""An ExpertPlacement deleted mid-rollout: the rollout stops where every pod agrees, every
sidecar drops what it staged and keeps serving its last committed placement (no layer
half-applied), and only then does the finalizer go; created again over the same pods, the
placement rolls out."""

from __future__ import annotations

import time

import pytest
import torch

from eplb_local.world import World

from .conftest import (
    APP,
    CONFIG,
    apply_offline,
    assert_invariants,
    events_about,
    new_target,
    rolled_out,
    served,
    served_revision,
    serves,
    spec,
)

pytestmark = pytest.mark.slow
PREPARE_SECONDS = 4  # every prepare waits that long: the rollout is slow enough to delete


def test_deleted_mid_rollout_aborts_everywhere_then_created_again_rolls_out(
    reused_world: World,
) -> None:
    world = reused_world
    expected = world.probe()
    start = served(world)
    target = new_target(world, 17, layers=3)
    changed = [
        layer for layer in range(CONFIG.layers) if not torch.equal(target[layer], start[layer])
    ]
    assert len(changed) >= 3, changed
    for pod in world.pods():
        world.inject(pod, f"delay-prepare={PREPARE_SECONDS}")
    apply_offline(world, target, rollout={"layersPerStep": 1, "barrierTimeoutSeconds": 20})
    world.wait(lambda: (world.status().get("layersCommitted") or 0) >= 1, 90, "a first batch")
    api = world.kube.api_checked()
    uid = world.placement()["metadata"]["uid"]
    api.checked("DELETE", f"{world.xpl}/{APP}")
    asked = time.monotonic()
    # The finalizer holds it while the batch being prepared is aborted on every pod.
    assert api.get(f"{world.xpl}/{APP}").code == 200
    world.wait(lambda: api.get(f"{world.xpl}/{APP}").code == 404, 60, "the deletion")
    took = time.monotonic() - asked

    infos = {pod.name: world.sidecar_info(pod.name) for pod in world.pods()}
    assert all(info["staged"] == [] for info in infos.values()), infos  # staging dropped
    tables = world.tables()
    routing = tables[0].routing
    assert all(torch.equal(table.routing, routing) for table in tables)  # no half-applied layer
    committed = [layer for layer in changed if torch.equal(routing[layer], target[layer])]
    kept = [layer for layer in changed if torch.equal(routing[layer], start[layer])]
    assert sorted(committed + kept) == changed  # each layer: the old placement or the new
    assert committed and kept, (committed, kept)  # stopped mid-rollout
    assert_invariants(world, expected)
    aborted = [
        e["message"] for e in events_about(world, uid) if e.get("reason") == "RolloutAborted"
    ]
    assert any("PlacementDeleted" in m and "aborted on every pod" in m for m in aborted), aborted
    print(f"deleted {took:.1f} s after the request, layers {committed} committed")

    # The same pods, a new incarnation: its revisions start above what they serve.
    for pod in world.pods():
        world.clear(pod)
    world.wait(lambda: world.revisions() == [], 60, "the garbage collector")
    serving = served_revision(world)  # the revision of the layers committed before
    api.checked("POST", world.xpl, spec(offline={"configMapRef": {"name": "moe-mapping"}}))
    world.wait(lambda: rolled_out(world), 90, "the rollout")
    assert world.status()["currentRevision"] == f"moe-{serving + 1}"  # above what they serve
    assert serves(world, target)
    assert all(world.sidecar_info(pod.name)["staged"] == [] for pod in world.pods())
    assert_invariants(world, expected)
