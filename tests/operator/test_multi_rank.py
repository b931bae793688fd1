"""Pods of several EP ranks, ranks taken from the workload: a StatefulSet of 2 pods x 2
ranks (rankFrom StatefulSetOrdinal, ranksPerPod 2), one sidecar per pod for both of its
engines, balanced end to end by the operator on the real API server; DESIGN §5 on every
rank."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import torch

from eplb_local.world import LocalKube, World

from .conftest import APP, CONFIG, assert_invariants, build_world, spec

pytestmark = pytest.mark.slow

RANKS_PER_POD = 2


@pytest.fixture(scope="module")
def multi_rank_world(kube: LocalKube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("multi-rank")
    yield from build_world(kube, workdir, namespace, with_prometheus=False,
                           ranks_per_pod=RANKS_PER_POD)  # fmt: skip


def placement(ranks_per_pod: int) -> dict[str, object]:
    body = spec(online={"intervalSeconds": 10, "windowSeconds": 10, "minGainPermille": 20})
    body["spec"]["pods"].pop("rankLabel", None)
    body["spec"]["pods"].update({"rankFrom": "StatefulSetOrdinal", "ranksPerPod": ranks_per_pod})
    return body


def test_statefulset_pods_of_two_ranks_are_balanced_end_to_end(multi_rank_world: World) -> None:
    world = multi_rank_world
    pods = world.pods()
    assert [p.name for p in pods] == [f"{APP}-0-0", f"{APP}-0-1"]  # 4 ranks in 2 pods
    assert len(world.tables()) == CONFIG.ranks
    expected = world.probe()
    api = world.kube.api_checked()

    # Told one rank per pod, the operator finds half the ranks: a condition and an Event,
    # nothing rolled out.
    api.checked("POST", world.xpl, placement(ranks_per_pod=1))
    world.wait(lambda: world.condition("Degraded").get("reason") == "PodsInconsistent", 60,
               "PodsInconsistent")  # fmt: skip
    message = world.condition("Degraded")["message"]
    assert "group moe-0 has 2 of 4 ranks (missing rank 2, 3)" in message, message
    assert any(e.get("reason") == "PodsInconsistent" and e.get("type") == "Warning"
               for e in world.events())  # fmt: skip
    assert world.revisions() == []

    # The right shape: the StatefulSet is the group, the ordinal the pod's index.
    world.settle(10)  # a whole window of skewed load
    api.checked("PATCH", f"{world.xpl}/{APP}",
                {"spec": {"pods": {"ranksPerPod": RANKS_PER_POD}}},
                content_type="application/merge-patch+json")  # fmt: skip
    try:
        world.wait(lambda: world.status().get("currentRevision") == f"{APP}-1", 240,
                   "the first rebalance")  # fmt: skip
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {world.status()}\nevents: "
                             f"{[e.get('message') for e in world.events()]}") from None  # fmt: skip
    status = world.status()
    assert status["lastRebalance"]["moves"] > 0
    assert world.condition("Ready")["status"] == "True"
    assert world.condition("Progressing")["reason"] == "RolloutComplete"

    # Every rank of both pods serves the revision, with exact weights and the same outputs.
    revision = torch.tensor(world.revisions()[0]["data"]["placement"])
    for table in world.tables():
        assert torch.equal(table.routing, revision)
    assert_invariants(world, expected)
    for pod in pods:
        info = world.sidecar_info(pod.name)
        assert (info["rank"], info["ranks"], info["ranks_per_pod"]) == (
            pod.rank, CONFIG.ranks, RANKS_PER_POD)  # fmt: skip

    # kubectl get xpl shows ranks per pod.
    done = world.kube.kubectl("--namespace", world.namespace, "get", "xpl", APP, "-o", "wide")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    columns = dict(zip(header.split(), row.split(), strict=False))
    assert columns["PER-POD"] == str(RANKS_PER_POD), done.stdout
    assert columns["RANK-FROM"] == "StatefulSetOrdinal", done.stdout
