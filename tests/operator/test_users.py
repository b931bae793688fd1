"""Sidecar realities: the engine and the sidecar are different users (as a vLLM image runs
as root and the sidecar as 65532), sharing the expert table through the pod's fsGroup."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from eplb_local.world import LocalKube, World

from .conftest import CONFIG, apply_offline, assert_invariants, planned, serves

pytestmark = pytest.mark.slow
ENGINE_USER = 1000


@pytest.fixture
def world(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[World]:
    with World(kube, namespace, tmp_path, CONFIG, engine_user=ENGINE_USER).running() as world:
        yield world


def test_an_engine_of_another_user_shares_its_table_through_the_fsgroup(world: World) -> None:
    expected = world.probe()
    table_dir = world.pods()[0].table_dir
    for name in ("routing.i64", "counters.i64", "step.lock", "weights/w13.bin"):
        info = (table_dir / name).stat()
        assert info.st_uid == ENGINE_USER, name  # the engine made it
        assert info.st_gid == 65532, name  # the pod's fsGroup, inherited from the emptyDir
        assert stat.S_IMODE(info.st_mode) & 0o060 == 0o060, name  # the sidecar may write
        assert stat.S_IMODE(info.st_mode) & 0o007 == 0, name  # nobody else may
    target = planned(seed=3)
    apply_offline(world, target)  # the sidecar (65532) commits into the engine's files
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 90, "the rollout")
    assert serves(world, target)
    assert_invariants(world, expected)
