"""Offline (GitOps): a mapping from `eplb plan` in a ConfigMap, applied with kubectl, rolled out
exactly; a changed mapping rolls out only the layers that changed; a bad one changes nothing;
pinning an old revision rolls back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from eplb_local.world import LocalKube, World
from eplb_operator.formats.mappings import PlacementDocument, render

from .conftest import (
    APP,
    CONFIG,
    RANK_LABEL,
    apply_offline,
    assert_invariants,
    build_world,
    new_target,
    placement_events,
    planned,
    rolled_out,
    served,
    served_revision,
    serves,
)

pytestmark = pytest.mark.slow


def manifests(phy2log: torch.Tensor, paused: bool = False) -> str:
    """`eplb plan`'s ExpertPlacement output, pointed at this world's pods and token."""
    doc = PlacementDocument(
        phy2log, list(range(CONFIG.layers)), "example/moe", CONFIG.experts, CONFIG.ranks,
        CONFIG.slots_per_rank,
    )  # fmt: skip
    config_map, placement = [
        d for d in yaml.safe_load_all(render(doc, "expertplacement", APP)) if d
    ]
    placement["spec"]["selector"] = {"matchLabels": {"app": APP}}
    placement["spec"]["pods"] = {"rankLabel": RANK_LABEL}
    placement["spec"]["rollout"] = {
        "layersPerStep": 2,
        "barrierTimeoutSeconds": 5,
        "paused": paused,
    }
    return yaml.safe_dump_all([config_map, placement])


def kubectl(world: World, *args: str, stdin: str | None = None) -> str:
    done = world.kube.kubectl("--namespace", world.namespace, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_mapping_from_git_is_rolled_out_exactly_then_changed_then_rolled_back(
    reused_world: World,
) -> None:
    world = reused_world
    expected = world.probe()
    start, base = served(world), served_revision(world)
    before = world.tables()[0].revisions.tolist()  # the revision each layer came with
    first = new_target(world, 23)
    # Applied paused: everything holds until it is unpaused.
    kubectl(world, "apply", "-f", "-", stdin=manifests(first, paused=True))
    world.wait(lambda: world.condition("Progressing").get("reason") == "Paused", 30, "paused")
    assert world.revisions() == [] and serves(world, start)
    kubectl(world, "patch", "xpl", APP, "--type=merge", "-p",
            '{"spec": {"rollout": {"paused": false}}}')  # fmt: skip
    world.wait(lambda: rolled_out(world), 60, "offline rollout")
    assert world.status()["currentRevision"] == f"moe-{base + 1}"
    assert serves(world, first)
    assert_invariants(world, expected)
    assert f"moe-{base + 1}" in kubectl(world, "get", "xpl", APP)
    moved = [not torch.equal(first[layer], start[layer]) for layer in range(CONFIG.layers)]
    after_first = [base + 1 if m else b for m, b in zip(moved, before, strict=True)]

    # A new commit in Git changes layer 2 only.
    second = first.clone()
    second[2] = planned(seed=9, previous=first)[2]
    assert not torch.equal(second[2], first[2])
    kubectl(world, "apply", "-f", "-", stdin=manifests(second))
    world.wait(lambda: world.status().get("currentRevision") == f"moe-{base + 2}", 60, "the change")
    assert serves(world, second)
    status = world.status()
    assert status["layersTotal"] == 1 and status["lastRebalance"]["layersUpdated"] == 1
    for table in world.tables():  # untouched layers keep the revision they came with
        assert table.revisions.tolist() == [*after_first[:2], base + 2, *after_first[3:]]
    assert_invariants(world, expected)

    # A broken mapping (expert 0 without a replica) is refused; nothing changes.
    broken = second.clone()
    broken[1][broken[1] == 0] = 1
    kubectl(world, "apply", "-f", "-", stdin=manifests(broken))
    world.wait(lambda: world.condition("Degraded").get("reason") == "InvalidSpec", 30, "refusal")
    assert "layer 1: logical expert 0 has no replica" in world.condition("Degraded")["message"]
    assert serves(world, second) and world.status()["currentRevision"] == f"moe-{base + 2}"

    # Rolling back: pin this placement's first revision.
    pin = f'{{"spec": {{"pinnedRevision": {base + 1}}}}}'
    kubectl(world, "patch", "xpl", APP, "--type=merge", "-p", pin)
    world.wait(lambda: serves(world, first), 60, "rollback")
    # That placement as a new revision, as a Deployment's rollback makes one.
    rollback = f"moe-{base + 3}"
    world.wait(lambda: world.status().get("currentRevision") == rollback, 30, "rollback status")
    assert [r["data"]["source"] for r in world.revisions()] == ["offline", "offline", "rollback"]
    assert "RolledBack" in placement_events(world)
    assert world.condition("Ready")["status"] == "True"
    assert_invariants(world, expected)


@pytest.fixture
def two_replicas(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[World]:
    yield from build_world(kube, tmp_path, namespace, with_prometheus=False, replicas=2)


def test_two_serving_replicas_get_the_same_placement_moving_weights_within_each(
    two_replicas: World,
) -> None:
    world = two_replicas
    expected = world.probe()
    target = planned(seed=5)
    apply_offline(world, target)
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 90, "both replicas")
    assert len(world.tables()) == 2 * CONFIG.ranks
    assert serves(world, target)
    assert_invariants(world, expected)
    assert world.condition("Ready")["status"] == "True"
