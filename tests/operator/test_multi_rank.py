"""Pods of several EP ranks, ranks taken from the workload: 2 pods x 2 ranks (ranksPerPod 2)
made by a StatefulSet (rankFrom StatefulSetOrdinal) or by a LeaderWorkerSet group (rankFrom
LeaderWorkerSet: the real LWS controller makes the pods and labels them with their group and
worker index), one sidecar per pod for both of its engines, a placement rolled out by the
operator on the real API server with experts moving between the GPUs of a pod (local copies)
and between pods (gloo); DESIGN §5 on every rank."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from eplb_local.world import LocalKube, World
from eplb_sidecar.engine.startup import identity_placement
from tests.conftest import unique_namespace

from .conftest import (
    APP,
    CONFIG,
    assert_invariants,
    mapping_json,
    revision_placement,
    serves,
    spec,
)

pytestmark = pytest.mark.slow

RANKS_PER_POD = 2


def start(kube: LocalKube, workdir: Path, workload: str) -> Iterator[World]:
    world = World(kube, unique_namespace(), workdir, CONFIG, ranks_per_pod=RANKS_PER_POD,
                  workload=workload)  # fmt: skip
    # Six processes per replica's two pods start on a shared machine: a generous wait.
    with world.running(timeout=600):
        yield world


@pytest.fixture(scope="module")
def multi_rank_world(kube: LocalKube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from start(kube, tmp_path_factory.mktemp("multi-rank"), "StatefulSet")


@pytest.fixture(scope="module")
def leader_worker_world(
    kube: LocalKube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    yield from start(kube, tmp_path_factory.mktemp("multi-rank-lws"), "LeaderWorkerSet")


def placement(ranks_per_pod: int, rank_from: str) -> dict[str, object]:
    body = spec(offline={"configMapRef": {"name": "moe-mapping"}})
    body["spec"]["pods"].pop("rankLabel", None)
    body["spec"]["pods"].update({"rankFrom": rank_from, "ranksPerPod": ranks_per_pod})
    return body


def rotated() -> torch.Tensor:
    """``[L, P]``: the start-up placement with every layer's slots shifted by 1-3 ranks, so
    each rank takes experts another rank held: in its own pod (a copy between the pod's
    GPUs) or in the other pod (a peer transfer)."""
    start = identity_placement(CONFIG)
    S = CONFIG.slots_per_rank
    return torch.stack([start[layer].roll((layer % 3 + 1) * S) for layer in range(CONFIG.layers)])


def shuffle_bytes(world: World, pod_ip: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{pod_ip}:9470/metrics", timeout=30) as response:
        text = response.read().decode()
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "eplb_shuffle_bytes")  # fmt: skip
    return {s.labels["source"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_statefulset_pods_of_two_ranks_are_rolled_out_on_every_rank(
    multi_rank_world: World,
) -> None:
    pods = multi_rank_world.pods()
    assert [p.name for p in pods] == [f"{APP}-0-0", f"{APP}-0-1"]  # 4 ranks in 2 pods
    rolled_out_on_every_rank(multi_rank_world, "StatefulSetOrdinal")


def test_leaderworkerset_pods_of_two_ranks_are_rolled_out_on_every_rank(
    leader_worker_world: World,
) -> None:
    """The group's leader ``moe-0`` (worker index 0) and its worker ``moe-0-1``, as the LWS
    controller names and labels them: the same rollout, ranks read off its labels."""
    world = leader_worker_world
    pods = world.pods()
    assert [p.name for p in pods] == [f"{APP}-0", f"{APP}-0-1"]
    api = world.kube.api_checked()
    lws = api.checked("GET", f"/apis/leaderworkerset.x-k8s.io/v1/namespaces/{world.namespace}"
                             f"/leaderworkersets/{APP}")  # fmt: skip
    for pod in pods:
        found = api.checked("GET", f"/api/v1/namespaces/{world.namespace}/pods/{pod.name}")
        labels = found["metadata"]["labels"]
        # Set by the LWS pod webhook, not by our chart: the pod template has neither label.
        assert labels["leaderworkerset.sigs.k8s.io/name"] == APP
        assert labels["leaderworkerset.sigs.k8s.io/worker-index"] == str(pod.rank)
    template = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
    assert "leaderworkerset.sigs.k8s.io/worker-index" not in template
    rolled_out_on_every_rank(world, "LeaderWorkerSet")


def rolled_out_on_every_rank(world: World, rank_from: str) -> None:
    pods = world.pods()
    assert len(world.tables()) == CONFIG.ranks
    expected = world.probe()
    api = world.kube.api_checked()
    target = rotated()
    api.checked("POST", f"/api/v1/namespaces/{world.namespace}/configmaps",
                {"metadata": {"name": "moe-mapping"},
                 "data": {"placement.json": mapping_json(target)}})  # fmt: skip

    # Told one rank per pod, the operator finds half the ranks: a condition and an Event,
    # nothing rolled out.
    api.checked("POST", world.xpl, placement(ranks_per_pod=1, rank_from=rank_from))
    world.wait(lambda: world.condition("Degraded").get("reason") == "PodsInconsistent", 120,
               "PodsInconsistent")  # fmt: skip
    message = world.condition("Degraded")["message"]
    assert "group moe-0 has 2 of 4 ranks (missing rank 2, 3)" in message, message
    assert any(e.get("reason") == "PodsInconsistent" and e.get("type") == "Warning"
               for e in world.events())  # fmt: skip
    assert world.revisions() == []

    # The right shape: the StatefulSet (the LWS group) is the group, the ordinal (the worker
    # index) the pod's index.
    api.checked("PATCH", f"{world.xpl}/{APP}",
                {"spec": {"pods": {"ranksPerPod": RANKS_PER_POD}}},
                content_type="application/merge-patch+json")  # fmt: skip
    try:
        world.wait(lambda: world.status().get("currentRevision") == f"{APP}-1", 300,
                   "the rollout")  # fmt: skip
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {world.status()}\nevents: "
                             f"{[e.get('message') for e in world.events()]}") from None  # fmt: skip
    assert world.condition("Ready")["status"] == "True"
    assert world.condition("Progressing")["reason"] == "RolloutComplete"

    # Every rank of both pods serves it, with exact weights and the same outputs.
    for table in world.tables():
        assert torch.equal(table.routing, target)
    assert_invariants(world, expected)
    moved = [shuffle_bytes(world, pod.ip) for pod in pods]
    assert sum(m.get("local", 0) for m in moved) > 0, moved  # between the GPUs of a pod
    assert sum(m.get("peer", 0) for m in moved) > 0, moved  # between the pods
    assert sum(m.get("checkpoint", 0) for m in moved) == 0, moved
    for pod in pods:
        info = world.sidecar_info(pod.name)
        assert (info["rank"], info["ranks"], info["ranks_per_pod"]) == (
            pod.rank, CONFIG.ranks, RANKS_PER_POD)  # fmt: skip

    # kubectl get xpl shows ranks per pod.
    done = world.kube.kubectl("--namespace", world.namespace, "get", "xpl", APP, "-o", "wide")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    names = header.split()
    starts = [header.index(f"{name} ") if name != names[-1] else header.rindex(name)
              for name in names]  # fmt: skip
    # Sliced at the header's positions: an empty cell (no balancedness yet) is no column.
    ends = [*starts[1:], None]
    columns = {name: row[start:end].strip()
               for name, start, end in zip(names, starts, ends, strict=True)}  # fmt: skip
    assert columns["PER-POD"] == str(RANKS_PER_POD), done.stdout
    assert columns["RANK-FROM"] == rank_from, done.stdout


def test_skewed_load_on_pods_of_two_ranks_is_rebalanced_online(multi_rank_world: World) -> None:
    """Online: the operator reads each pod's slots (both local ranks' counters) from the
    sidecars, plans and rolls out; every rank serves the new revision."""
    world = multi_rank_world
    api = world.kube.api_checked()
    # The test before left its placement (and the engines on its revision): this one is
    # another incarnation over the same pods.
    for item in api.get(world.xpl).body.get("items", []):
        api.delete(f"{world.xpl}/{item['metadata']['name']}")
    world.wait(lambda: not api.get(world.xpl).body.get("items"), 120, "the placement to go")
    expected = world.probe()
    body = spec(online={"intervalSeconds": 10, "windowSeconds": 10, "minGainPermille": 20})
    body["spec"]["pods"].pop("rankLabel", None)
    body["spec"]["pods"].update({"rankFrom": "StatefulSetOrdinal", "ranksPerPod": RANKS_PER_POD})
    world.settle(10)  # a whole window of skewed load
    api.checked("POST", world.xpl, body)
    # The first plan in a fresh operator pod compiles the placement kernels (numba): minutes
    # on a loaded machine.
    # Revisions are numbered across incarnations: the first of this one follows the last.
    world.wait(lambda: bool(world.status().get("currentRevision")), 900, "the first rebalance")
    status = world.status()
    assert status["lastRebalance"]["moves"] > 0
    assert world.condition("Ready")["status"] == "True"

    def serving_the_current_revision() -> bool:  # between two online passes' rollouts
        status = world.status()
        current = status.get("currentRevision")
        return (current is not None and status.get("targetRevision") in (None, current)
                and serves(world, revision_placement(world, current)))  # fmt: skip

    world.wait(serving_the_current_revision, 120, "every rank on the current revision")
    assert_invariants(world, expected)
