"""A whole local world: Kubernetes API, EP pods (engine + sidecar), Prometheus, operator."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from eplb_operator.cluster import LocalCluster
from eplb_operator.placement import Topology, plan
from eplb_operator.sandbox.operator_process import OperatorProcess
from eplb_operator.sandbox.pods import publish_group, publish_token
from eplb_operator.sandbox.prometheus import LocalPrometheus, Target
from eplb_operator.workloads import zipf_load
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.reference import identity_placement
from eplb_sidecar.launch import LocalGroup, LocalPod
from tests.cluster.conftest import XPL, Api
from tests.sidecar.conftest import assert_slots_hold_their_experts

NAMESPACE = "default"
APP = "moe"
CONFIG = EngineConfig(
    ranks=4, layers=4, experts=12, slots_per_rank=4, hidden=32, intermediate=16,
    workload=Workload(skew=1.4, tokens_per_step=128, step_interval=0.02, tokens_per_second=4000),
)  # fmt: skip


@dataclass
class World:
    workdir: Path
    cluster: LocalCluster
    api: Api
    group: LocalGroup
    operator: OperatorProcess
    prometheus: LocalPrometheus | None
    started: float  # when every engine was serving
    others: list[LocalGroup]  # further serving replicas (EP groups), when there are any

    def settle(self, seconds: float) -> None:
        """Wait until the engines have served for ``seconds``: a load window that reaches
        back before every engine ran would count the early starters' tokens as heat."""
        time.sleep(max(0.0, self.started + seconds - time.monotonic()))

    def placement(self, name: str = APP) -> dict[str, Any]:
        return dict(self.api.get(f"{XPL}/{name}").body)

    def status(self, name: str = APP) -> dict[str, Any]:
        return dict(self.placement(name).get("status") or {})

    def condition(self, kind: str, name: str = APP) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == kind), {})

    def events(self) -> list[dict[str, Any]]:
        return list(self.api.get(f"/api/v1/namespaces/{NAMESPACE}/events").body["items"])

    def revisions(self) -> list[dict[str, Any]]:
        path = f"/apis/apps/v1/namespaces/{NAMESPACE}/controllerrevisions"
        return list(self.api.get(path).body["items"])

    def revision_placement(self, name: str) -> torch.Tensor:
        """``[L, P]`` of the stored revision ``name``."""
        revision = next(r for r in self.revisions() if r["metadata"]["name"] == name)
        return torch.tensor(revision["data"]["placement"])

    def tables(self) -> list[ExpertTable]:
        """Every pod's table, of every serving replica."""
        return [
            ExpertTable.attach(pod.table_dir)
            for replica in [self.group, *self.others]
            for pod in replica.pods
        ]

    def wait(self, check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.25)
        raise AssertionError(
            f"timed out waiting for {what or check}; status: {self.status()}\n"
            f"operator log tail:\n{self.operator.output()[-3000:]}"
        )

    def operator_metrics(self) -> str:
        url = f"http://127.0.0.1:{self.operator.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": APP}},
        "pods": {"tokenSecret": "eplb-sidecar-token"},
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
    world.api.post(
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        {"metadata": {"name": "moe-mapping"}, "data": {"placement.json": mapping_json(target)}},
    )
    body = spec(offline={"configMapRef": {"name": "moe-mapping"}}, **changes)
    assert world.api.post(XPL, body).code == 201


def serves(world: World, target: torch.Tensor) -> bool:
    return all(torch.equal(table.routing, target) for table in world.tables())


def restart_when_dead(world: World, pod: LocalPod, after: float = 1.0) -> threading.Thread:
    """What the kubelet does for a crashed container: start it again (without the fault)."""

    def supervise() -> None:
        assert pod.sidecar is not None
        pod.sidecar.wait()
        time.sleep(after)
        world.group.start_sidecar(pod)

    thread = threading.Thread(target=supervise, daemon=True)
    thread.start()
    return thread


def assert_invariants(world: World, expected_probe: torch.Tensor) -> None:
    """DESIGN §5: one placement on every pod, every expert replicated, exact weights, same
    outputs."""
    tables = world.tables()
    for table in tables[1:]:
        assert torch.equal(table.routing, tables[0].routing), "pods disagree on the placement"
    for row in tables[0].routing:
        assert set(row.tolist()) == set(range(CONFIG.experts))
    for table in tables:
        assert_slots_hold_their_experts(table, CONFIG.seed)
        assert table.routing.shape == (CONFIG.layers, CONFIG.ranks * CONFIG.slots_per_rank)
    for replica in [world.group, *world.others]:  # the same model, whichever replica serves
        assert torch.equal(replica.probe(), expected_probe), "the model's outputs changed"


def build_world(workdir: Path, with_prometheus: bool, replicas: int = 1) -> Iterator[World]:
    """``replicas`` serving replicas (EP groups "0", "1", …) of CONFIG.ranks pods each."""
    write_checkpoint(workdir / "checkpoint", CONFIG)
    with LocalCluster(workdir / "cluster") as cluster:
        api = Api(cluster.url)
        group = LocalGroup(CONFIG, workdir / "pods", checkpoint=workdir / "checkpoint").start()
        others = [
            LocalGroup(CONFIG.model_copy(update={"group": str(index)}), workdir / f"pods-{index}",
                       checkpoint=workdir / "checkpoint", token=group.token).start()
            for index in range(1, replicas)
        ]  # fmt: skip
        started = time.monotonic()
        prometheus = None
        operator = OperatorProcess(cluster.kubeconfig, workdir / "operator")
        try:
            for replica in [group, *others]:
                publish_group(cluster.url, NAMESPACE, replica, APP)
            publish_token(cluster.url, NAMESPACE, "eplb-sidecar-token", group.token)
            if with_prometheus:
                targets = [Target(f"127.0.0.1:{p.metrics_port}", NAMESPACE, p.name)
                           for p in group.pods]  # fmt: skip
                # Scrapes much finer than the 10 s window: increase() extrapolates each
                # target from its own scrape phase, a bias of up to interval/window per pod.
                prometheus = LocalPrometheus(
                    workdir / "prometheus", targets, scrape_interval="250ms"
                ).start()
            operator.start()
            yield World(workdir, cluster, api, group, operator, prometheus, started, others)
        finally:
            operator.stop()
            if prometheus is not None:
                prometheus.stop()
            for replica in [group, *others]:
                replica.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from build_world(tmp_path, with_prometheus=False)


@pytest.fixture
def world_with_prometheus(tmp_path: Path) -> Iterator[World]:
    yield from build_world(tmp_path, with_prometheus=True)
