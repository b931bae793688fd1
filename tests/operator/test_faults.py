"""Faults during rollouts; each ends with every invariant of DESIGN.md §5 holding."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from aiohttp import web

from eplb_local.processes import free_port
from eplb_local.world import World
from eplb_operator.controller import kube

from .conftest import (
    APP,
    apply_offline,
    assert_invariants,
    new_target,
    placement_events,
    revision_placement,
    rolled_out,
    served,
    serves,
    spec,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("fault", "aborts", "seed"),
    [("exit-at-prepare", True, 3), ("exit-after-prepare", False, 5), ("exit-at-commit", False, 7)],
)
def test_a_sidecar_killed_during_a_rollout(
    reused_world: World, fault: str, aborts: bool, seed: int
) -> None:
    world = reused_world
    expected = world.probe()
    victim = world.pod(1)
    restarts = world.restarts(victim.name, "eplb-sidecar")
    world.inject(victim, fault)  # fires once; the node restarts the container, as a kubelet
    target = new_target(world, seed)
    apply_offline(world, target)
    world.wait(lambda: rolled_out(world), 90, "the rollout")
    assert world.restarts(victim.name, "eplb-sidecar") == restarts + 1
    assert serves(world, target)
    assert_invariants(world, expected)
    reasons = placement_events(world)
    assert ("RolloutAborted" in reasons) == aborts, reasons
    assert world.condition("Ready")["status"] == "True"


def test_a_slow_pod_past_the_barrier_timeout_aborts_everywhere(reused_world: World) -> None:
    world = reused_world
    expected = world.probe()
    slow = world.pod(2)
    world.inject(slow, "delay-prepare=8")
    before = [table.routing.clone() for table in world.tables()]
    target = new_target(world, 11)
    apply_offline(world, target)
    world.wait(lambda: world.condition("Degraded").get("reason") == "BarrierTimeout", 60, "abort")
    assert world.status().get("targetRevision") is None
    time.sleep(1)  # every pod has dropped its staging: they all still serve the old placement
    assert all(torch.equal(t.routing, b) for t, b in zip(world.tables(), before, strict=True))
    assert all(not table_has_staging(world, pod.name) for pod in world.pods())
    world.clear(slow)  # the pod recovers
    world.wait(lambda: rolled_out(world), 90, "the retry")
    assert serves(world, target)
    assert_invariants(world, expected)


def table_has_staging(world: World, pod: str) -> bool:
    """The sidecar's own word (its /v1/info), asked as the operator asks it."""
    info = world.sidecar_info(pod)
    return bool(info["staged"])


def test_the_operator_restarted_mid_rollout_resumes_without_replanning(
    reused_world: World,
) -> None:
    world = reused_world
    expected = world.probe()
    before = served(world)
    for pod in world.pods():  # every prepare takes a while: the rollout is slow
        world.inject(pod, "delay-prepare=1.5")
    body = spec(online={"intervalSeconds": 3600, "windowSeconds": 10})
    body["spec"]["rollout"]["layersPerStep"] = 1
    time.sleep(2)  # some load to plan from
    world.kube.api_checked().checked("POST", world.xpl, body)
    world.wait(lambda: (world.status().get("layersCommitted") or 0) >= 1, 60, "half a rollout")
    revision = world.status()["targetRevision"]
    world.kill_operator()  # a crash; the node restarts the container
    world.wait(lambda: world.status().get("currentRevision") == revision, 90, "the resumption")
    assert [r["metadata"]["name"] for r in world.revisions()] == [revision]  # not replanned
    assert_invariants(world, expected)
    # Progress counts the whole rollout, the layers committed before the restart included.
    changed = int((revision_placement(world, revision) != before).any(1).sum())
    status = world.status()
    assert status["layersCommitted"] == status["layersTotal"] == changed
    assert status["lastRebalance"]["layersUpdated"] == changed


def test_a_pod_restarted_after_commit_is_resynced(reused_world: World) -> None:
    world = reused_world
    expected = world.probe()
    target = new_target(world, 13)
    apply_offline(world, target)
    world.wait(lambda: rolled_out(world), 60, "the rollout")
    revision = world.status()["currentRevision"]
    old = world.pod(3)
    # Deleted; its StatefulSet creates it again, and the new engine starts from the
    # start-up placement.
    world.kube.kubectl_checked("delete", "pod", "-n", world.namespace, old.name)
    world.wait_ready()
    fresh = world.pod(3)
    assert fresh.uid != old.uid
    world.wait(lambda: serves(world, target), 60, "the re-sync")
    assert_invariants(world, expected)
    assert [r["metadata"]["name"] for r in world.revisions()] == [revision]


def test_prometheus_down_slow_or_garbage_is_metrics_unavailable_and_changes_nothing(
    reused_world: World,
) -> None:
    world = reused_world
    expected = world.probe()
    before = [table.routing.clone() for table in world.tables()]
    down = f"http://{world.host_address}:{free_port()}"  # nothing listens there
    body = spec(
        online={"intervalSeconds": 10, "windowSeconds": 10},
        metrics={"prometheusUrl": down, "timeoutSeconds": 2},
    )
    world.kube.api_checked().checked("POST", world.xpl, body)

    def unavailable(fragment: str) -> bool:
        condition = world.condition("Degraded")
        return condition.get("reason") == "MetricsUnavailable" and fragment in condition["message"]

    world.wait(lambda: unavailable("failed"), 30, "down")
    with FaultyPrometheus(world.host_address) as faulty:
        for path, fragment in (("/garbage", "JSONDecodeError"), ("/slow", "Timeout"),
                               ("/partial", "no load series from pods")):  # fmt: skip
            world.kube.api_checked().merge(
                f"{world.xpl}/{APP}", {"spec": {"metrics": {"prometheusUrl": faulty.url + path}}}
            )
            world.wait(lambda fragment=fragment: unavailable(fragment), 30, path)
    assert all(torch.equal(t.routing, b) for t, b in zip(world.tables(), before, strict=True))
    assert world.revisions() == []
    assert_invariants(world, expected)


class FaultyPrometheus:
    """An HTTP server at Prometheus's API path that misbehaves in the named way, on this
    machine's address of the pod network (where the operator's pod reaches it)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
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
            series = {"metric": {"pod": "moe-0-0", "layer": "0", "expert": "0"},
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
            self.loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
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
    reused_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = reused_world
    monkeypatch.setenv("KUBECONFIG", str(world.kube.kubeconfig))
    expected = world.probe()
    world.scale_operator(0)  # only this test writes
    api = world.kube.api_checked()
    api.checked("POST", world.xpl, spec(online={}))
    calls: list[str] = []

    def change(current: dict[str, object]) -> dict[str, object]:
        calls.append(str(current["metadata"]["resourceVersion"]))  # type: ignore[index]
        if len(calls) == 1:  # someone else writes between our read and our patch
            api.merge(f"{world.xpl}/{APP}", {"metadata": {"annotations": {"touched": "yes"}}})
        return {"phase": f"written-{len(calls)}"}

    asyncio.run(kube.update_placement_status(world.namespace, APP, change))
    assert len(calls) == 2 and calls[0] != calls[1]
    assert world.status()["phase"] == "written-2"
    assert_invariants(world, expected)
