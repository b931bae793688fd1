"""Faults during rollouts; each ends with every invariant of DESIGN.md §5 holding."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import pytest
import torch
from aiohttp import web

from eplb_operator.controller import kube
from eplb_operator.sandbox.pods import delete_pod, publish_pod
from eplb_sidecar.engine.reference import identity_placement
from eplb_sidecar.launch import LocalPod, free_port
from tests.cluster.conftest import XPL

from .conftest import (
    APP,
    CONFIG,
    NAMESPACE,
    World,
    apply_offline,
    assert_invariants,
    planned,
    restart_when_dead,
    serves,
    spec,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("fault", "aborts"),
    [("exit-at-prepare", True), ("exit-after-prepare", False), ("exit-at-commit", False)],
)
def test_a_sidecar_killed_during_a_rollout(world: World, fault: str, aborts: bool) -> None:
    expected = world.group.probe()
    victim = world.group.pods[1]
    world.group.kill(victim, "sidecar")
    world.group.start_sidecar(victim, env={"EPLB_SIDECAR_FAULT": fault})
    world.group.wait_ready()
    supervisor = restart_when_dead(world, victim)
    target = planned(seed=3)
    apply_offline(world, target)
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 90, "the rollout")
    supervisor.join(10)
    assert serves(world, target)
    assert_invariants(world, expected)
    reasons = [event.get("reason") for event in world.events()]
    assert ("RolloutAborted" in reasons) == aborts, reasons
    assert world.condition("Ready")["status"] == "True"


def test_a_slow_pod_past_the_barrier_timeout_aborts_everywhere(world: World) -> None:
    expected = world.group.probe()
    slow = world.group.pods[2]
    world.group.kill(slow, "sidecar")
    world.group.start_sidecar(slow, env={"EPLB_SIDECAR_FAULT": "delay-prepare=8"})
    world.group.wait_ready()
    before = [table.routing.clone() for table in world.tables()]
    target = planned(seed=3)
    apply_offline(world, target)
    world.wait(lambda: world.condition("Degraded").get("reason") == "BarrierTimeout", 60, "abort")
    assert world.status().get("targetRevision") is None
    time.sleep(1)  # every pod has dropped its staging: they all still serve the old placement
    assert all(torch.equal(t.routing, b) for t, b in zip(world.tables(), before, strict=True))
    assert all(not table_has_staging(world, pod) for pod in world.group.pods)
    world.group.kill(slow, "sidecar")  # the pod recovers
    world.group.start_sidecar(slow)
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 90, "the retry")
    assert serves(world, target)
    assert_invariants(world, expected)


def table_has_staging(world: World, pod: LocalPod) -> bool:
    request = urllib.request.Request(
        f"{pod.control_url}/v1/info", headers={"Authorization": f"Bearer {world.group.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bool(json.loads(response.read())["staged"])


def test_the_operator_restarted_mid_rollout_resumes_without_replanning(world: World) -> None:
    expected = world.group.probe()
    for pod in world.group.pods:  # every prepare takes a while: the rollout is slow
        world.group.kill(pod, "sidecar")
        world.group.start_sidecar(pod, env={"EPLB_SIDECAR_FAULT": "delay-prepare=1.5"})
    world.group.wait_ready()
    body = spec(online={"intervalSeconds": 3600, "windowSeconds": 10})
    body["spec"]["rollout"]["layersPerStep"] = 1
    time.sleep(2)  # some load to plan from
    assert world.api.post(XPL, body).code == 201
    world.wait(lambda: (world.status().get("layersCommitted") or 0) >= 1, 60, "half a rollout")
    assert world.status()["targetRevision"] == "moe-1"
    world.operator.kill()
    world.operator.start()
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 90, "the resumed rollout")
    assert [r["metadata"]["name"] for r in world.revisions()] == ["moe-1"]
    assert_invariants(world, expected)
    # Progress counts the whole rollout, the layers committed before the restart included.
    changed = int((world.revision_placement("moe-1") != identity_placement(CONFIG)).any(1).sum())
    status = world.status()
    assert status["layersCommitted"] == status["layersTotal"] == changed
    assert status["lastRebalance"]["layersUpdated"] == changed


def test_a_pod_restarted_after_commit_is_resynced(world: World) -> None:
    expected = world.group.probe()
    target = planned(seed=3)
    apply_offline(world, target)
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 60, "the rollout")
    old = world.group.pods[3]
    delete_pod(world.cluster.url, NAMESPACE, old.name)
    fresh = world.group.restart_pod(old)  # serves the start-up placement again
    assert torch.equal(world.tables()[3].routing, identity_placement(CONFIG))
    publish_pod(world.cluster.url, NAMESPACE, fresh, APP, CONFIG.group)
    world.wait(lambda: serves(world, target), 60, "the re-sync")
    assert_invariants(world, expected)
    assert [r["metadata"]["name"] for r in world.revisions()] == ["moe-1"]


def test_prometheus_down_slow_or_garbage_is_metrics_unavailable_and_changes_nothing(
    world_with_prometheus: World,
) -> None:
    world = world_with_prometheus
    assert world.prometheus is not None
    expected = world.group.probe()
    before = [table.routing.clone() for table in world.tables()]
    world.prometheus.stop()  # down
    body = spec(
        online={"intervalSeconds": 10, "windowSeconds": 10},
        metrics={"prometheusUrl": world.prometheus.url, "timeoutSeconds": 2},
    )
    assert world.api.post(XPL, body).code == 201

    def unavailable(fragment: str) -> bool:
        condition = world.condition("Degraded")
        return condition.get("reason") == "MetricsUnavailable" and fragment in condition["message"]

    world.wait(lambda: unavailable("failed"), 30, "down")
    with FaultyPrometheus() as faulty:
        for path, fragment in (("/garbage", "JSONDecodeError"), ("/slow", "Timeout"),
                               ("/partial", "no load series from pods")):  # fmt: skip
            world.api.merge(
                f"{XPL}/{APP}", {"spec": {"metrics": {"prometheusUrl": faulty.url + path}}}
            )
            world.wait(lambda fragment=fragment: unavailable(fragment), 30, path)
    assert all(torch.equal(t.routing, b) for t, b in zip(world.tables(), before, strict=True))
    assert world.revisions() == []
    assert_invariants(world, expected)


class FaultyPrometheus:
    """An HTTP server at Prometheus's API path that misbehaves in the named way."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        self._loop_thread: threading.Thread | None = None

    def __enter__(self) -> FaultyPrometheus:
        ready = threading.Event()

        async def garbage(request: web.Request) -> web.Response:
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(6)  # past the spec's 2 s timeout
            return web.json_response({})

        async def partial(request: web.Request) -> web.Response:
            series = {"metric": {"pod": "moe-0-rank-0", "layer": "0", "expert": "0"},
                      "value": [time.time(), "5"]}  # fmt: skip
            return web.json_response(
                {"status": "success", "data": {"resultType": "vector", "result": [series]}}
            )

        app = web.Application()
        for name, handler in (("garbage", garbage), ("slow", slow), ("partial", partial)):
            app.router.add_route("*", f"/{name}/api/v1/query", handler)

        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            runner = web.AppRunner(app)
            self.loop.run_until_complete(runner.setup())
            self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            self._runner = runner
            ready.set()
            self.loop.run_forever()

        self._loop_thread = threading.Thread(target=serve, daemon=True)
        self._loop_thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(10)
        self.loop.close()


def test_a_409_on_the_status_write_is_retried_on_the_fresh_object(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(world.cluster.kubeconfig))
    world.operator.stop()  # only this test writes
    assert world.api.post(XPL, spec(online={})).code == 201
    calls: list[str] = []

    def change(current: dict[str, object]) -> dict[str, object]:
        calls.append(str(current["metadata"]["resourceVersion"]))  # type: ignore[index]
        if len(calls) == 1:  # someone else writes between our read and our patch
            world.api.merge(f"{XPL}/{APP}", {"metadata": {"annotations": {"touched": "yes"}}})
        return {"phase": f"written-{len(calls)}"}

    asyncio.run(kube.update_placement_status(NAMESPACE, APP, change))
    assert len(calls) == 2 and calls[0] != calls[1]
    assert world.status()["phase"] == "written-2"
