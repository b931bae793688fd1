"""A whole local world per test: the operator from its chart, serving pods from the
reference-moe chart (engine + injected sidecar), optionally Prometheus; helpers to plan,
apply and check DESIGN.md §5."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from eplb_local.engine.verify import group_errors
from eplb_local.world import LocalKube, World
from eplb_operator.placement import Topology, plan
from eplb_operator.workloads import zipf_load
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.startup import identity_placement
from tests.conftest import unique_namespace

APP = "moe"
# 4000 tokens a second in steps of 0.1 s: a step costs the same few milliseconds of CPU
# whatever its size, and a world's four engines at 50 steps a second kept half a core busy.
CONFIG = EngineConfig(
    ranks=4, layers=4, experts=12, slots_per_rank=4, hidden=32, intermediate=16,
    workload=Workload(skew=1.4, tokens_per_step=128, step_interval=0.1, tokens_per_second=4000),
)  # fmt: skip
RANK_LABEL = "apps.kubernetes.io/pod-index"  # the StatefulSet ordinal is the EP rank
# The package world's serving pods' transfer range ends here, not at the chart's default:
# tests/operator/test_transfer_ports.py checks that what is configured is what applies.
TRANSFER_PORT_END = 29599


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": APP}},
        "pods": {"rankLabel": RANK_LABEL},
        "model": {"layers": CONFIG.layers, "experts": CONFIG.experts},
        "topology": {"ranks": CONFIG.ranks, "slotsPerRank": CONFIG.slots_per_rank},
        "rollout": {"layersPerStep": 2, "barrierTimeoutSeconds": 5},
    }
    body.update(changes)
    return {"apiVersion": "eplb.io/v1alpha1", "kind": "ExpertPlacement",
            "metadata": {"name": APP}, "spec": body}  # fmt: skip


def planned(seed: int, previous: torch.Tensor | None = None) -> torch.Tensor:
    """``[L, P]``: the placement engine's plan for a Zipf load, from ``previous`` (default:
    the engines' start-up placement)."""
    topology = Topology(CONFIG.experts, CONFIG.ranks, CONFIG.slots_per_rank, 1, 1)
    load = zipf_load(CONFIG.layers, CONFIG.experts, 1.2, seed=seed)
    start = identity_placement(CONFIG) if previous is None else previous
    return plan(load, topology, previous=start).placement


def mapping_json(phy2log: torch.Tensor) -> str:
    """The value `eplb plan` writes into its ConfigMap."""
    return json.dumps({"schema": "eplb.io/placement-v1", "layers": CONFIG.layers,
                       "experts": CONFIG.experts, "phy2log": phy2log.tolist()})  # fmt: skip


def apply_offline(world: World, target: torch.Tensor, **changes: object) -> None:
    api = world.kube.api_checked()
    api.checked(
        "POST",
        f"/api/v1/namespaces/{world.namespace}/configmaps",
        {"metadata": {"name": "moe-mapping"}, "data": {"placement.json": mapping_json(target)}},
    )
    body = spec(offline={"configMapRef": {"name": "moe-mapping"}}, **changes)
    api.checked("POST", world.xpl, body)


def serves(world: World, target: torch.Tensor) -> bool:
    return all(torch.equal(table.routing, target) for table in world.tables())


def revision_placement(world: World, name: str) -> torch.Tensor:
    """``[L, P]`` of the stored revision ``name``."""
    revision = next(r for r in world.revisions() if r["metadata"]["name"] == name)
    return torch.tensor(revision["data"]["placement"])


def assert_invariants(world: World, expected_probe: torch.Tensor) -> None:
    """DESIGN §5: one placement on every pod, every expert replicated, exact weights, same
    outputs, for every serving replica."""
    tables = world.tables()
    assert len(tables) == world.groups * CONFIG.ranks
    errors = group_errors(tables, CONFIG.seed)
    assert not errors, errors
    for table in tables:
        assert table.routing.shape == (CONFIG.layers, CONFIG.ranks * CONFIG.slots_per_rank)
    for group in range(world.groups):  # the same model, whichever replica serves
        assert torch.equal(world.probe(str(group)), expected_probe), "the model's outputs changed"


def build_world(
    kube: LocalKube,
    workdir: Path,
    namespace: str,
    with_prometheus: bool,
    replicas: int = 1,
    ranks_per_pod: int = 1,
) -> Iterator[World]:
    """``replicas`` serving replicas (EP groups "0", "1", …) of CONFIG.ranks ranks each, in
    pods of ``ranks_per_pod`` ranks."""
    world = World(kube, namespace, workdir, CONFIG, groups=replicas,
                  with_prometheus=with_prometheus, ranks_per_pod=ranks_per_pod)  # fmt: skip
    with world.running():
        yield world


@pytest.fixture
def world(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[World]:
    # A world per test: one shared by the package and reset between tests (World.reset, tried
    # in commit 5488af8) left a re-created placement's first pass undone for a minute, cause
    # not found yet (see the closing note of that stop).
    yield from build_world(kube, tmp_path, namespace, with_prometheus=False)


@pytest.fixture(scope="package")
def package_world(kube: LocalKube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for the tests of this package that take :func:`reused_world`."""
    ranged = {"eplb-sidecar": {"transferPortEnd": TRANSFER_PORT_END}}
    workdir = tmp_path_factory.mktemp("package-world")
    world = World(kube, unique_namespace(), workdir, CONFIG, serving_values=ranged)
    with world.running(timeout=600):  # the package's first test may meet a busy machine
        yield world


@pytest.fixture
def reused_world(package_world: World) -> World:
    """The package's world as a test of its own finds it: no ExpertPlacement (nor its
    revisions and mapping), no fault armed, the operator and every pod Ready.  The engines
    keep serving what the previous test left: tests compare with what they find
    (:func:`served`, :func:`placement_events`, restart counts before and after)."""
    world, api = package_world, package_world.kube.api_checked()
    for pod in world.pods():
        world.clear(pod)
    if not world.operator_pods():  # a test ran without an operator
        world.scale_operator(1)
    for left in api.get(world.xpl).body.get("items", []):
        api.delete(f"{world.xpl}/{left['metadata']['name']}")
    world.wait(lambda: not api.get(world.xpl).body.get("items"), 60, "placements deleted")
    world.wait(lambda: world.revisions() == [], 60, "the garbage collector")
    api.delete(f"/api/v1/namespaces/{world.namespace}/configmaps/moe-mapping")
    world.wait_ready()
    return world


def served(world: World) -> torch.Tensor:
    """``[L, P]``: the placement the first pod's table routes by (DESIGN §5: all agree)."""
    return world.tables()[0].routing.clone()


def new_target(world: World, seed: int, layers: int = 1) -> torch.Tensor:
    """``[L, P]``: a plan for another load, from what the pods serve now, that changes at
    least ``layers`` layers.  The load of ``seed`` first, then of seed + 1000, + 2000, …: an
    earlier test of the shared world may have rolled out the plan of the same load."""
    now = served(world)
    for attempt in range(20):
        target = planned(seed + 1000 * attempt, previous=now)
        if int((target != now).any(1).sum()) >= layers:
            return target
    raise AssertionError(f"no load from seed {seed} on changes {layers} layers")


def rolled_out(world: World, name: str = APP) -> bool:
    """This placement's first rollout is done (its status is written after the last commit)."""
    return "currentRevision" in world.status(name)


def served_revision(world: World) -> int:
    """The newest revision any pod serves a layer of (0: the start-up placement)."""
    return max(max(world.sidecar_info(pod.name)["revisions"]) for pod in world.pods())


def placement_events(world: World, name: str = APP) -> list[str]:
    """The reasons of the Events about the current ExpertPlacement ``name`` (not about an
    earlier one of that name: a reused world keeps its namespace's Events)."""
    uid = world.placement(name)["metadata"]["uid"]
    return [event.get("reason", "") for event in events_about(world, uid)]


def events_about(world: World, uid: str) -> list[dict[str, Any]]:
    """The Events whose object is the one of ``uid`` (which may be deleted by now)."""
    return [e for e in world.events() if (e.get("involvedObject") or {}).get("uid") == uid]


@pytest.fixture
def world_with_prometheus(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[World]:
    yield from build_world(kube, tmp_path, namespace, with_prometheus=True)
