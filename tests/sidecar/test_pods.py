"""Four pods (reference engine + sidecar processes each) exchanging weights through gloo.

Everything over real HTTP and real torch.distributed; the invariants of DESIGN.md §5 are
checked on every pod's shared memory after each rollout.  The last tests drive the pods
with the operator's own rollout code while a peer misbehaves: it sends a corrupt or a
truncated expert, or it stops answering.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import torch

from eplb_local.faults import FAULT_FILE_ENV
from eplb_local.launch import LocalGroup
from eplb_local.world.endpoints import local_endpoints
from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.controller.rollout import (
    Groups,
    Rollout,
    RolloutAbortedError,
    RolloutOptions,
    RolloutReport,
)
from eplb_sidecar.api import AbortRequest, CommitRequest, PrepareRequest, Result, TransferGroup
from eplb_sidecar.client import SidecarClient, SidecarError
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.config import EngineConfig, Workload

from .conftest import assert_slots_hold_their_experts, assert_unchanged, snapshot

pytestmark = pytest.mark.slow

CONFIG = EngineConfig(
    ranks=4, layers=4, experts=12, slots_per_rank=4, hidden=32, intermediate=16,
    workload=Workload(tokens_per_step=128, step_interval=0.01),
)  # fmt: skip


def start_group(workdir: Path) -> LocalGroup:
    """Four pods; each sidecar injects the fault its file ``fault-<rank>`` names, if any."""
    write_checkpoint(workdir / "checkpoint", CONFIG)
    faults = {rank: {FAULT_FILE_ENV: str(workdir / f"fault-{rank}")} for rank in range(4)}
    return LocalGroup(
        CONFIG, workdir, checkpoint=workdir / "checkpoint", sidecar_env=faults
    ).start()


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGroup]:
    pods = start_group(tmp_path_factory.mktemp("pods"))
    yield pods
    pods.stop()


def tables(group: LocalGroup) -> list[ExpertTable]:
    return [ExpertTable.attach(pod.table_dir) for pod in group.pods]


def clients(group: LocalGroup, token: str | None = None) -> list[SidecarClient]:
    return [SidecarClient(pod.control_url, token or group.token) for pod in group.pods]


def new_placement(seed: int) -> dict[int, list[int]]:
    """A valid ``[P]`` row per layer that moves most slots (most experts cross ranks)."""
    num_slots = CONFIG.ranks * CONFIG.slots_per_rank
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for layer in range(CONFIG.layers):
        extra = torch.randint(CONFIG.experts, (num_slots - CONFIG.experts,), generator=generator)
        row = torch.cat([torch.arange(CONFIG.experts), extra])
        layers[layer] = row[torch.randperm(num_slots, generator=generator)].tolist()
    return layers


def assert_invariants(group: LocalGroup, expected_probe: torch.Tensor) -> None:
    """DESIGN §5 on every pod: one placement, every expert replicated, exact weights,
    identical outputs."""
    views = tables(group)
    for table in views[1:]:
        assert torch.equal(table.routing, views[0].routing), "pods disagree on the placement"
        assert torch.equal(table.revisions, views[0].revisions)
    for layer_row in views[0].routing:
        assert set(layer_row.tolist()) == set(range(CONFIG.experts))
    for table in views:
        assert_slots_hold_their_experts(table, CONFIG.seed)
    assert torch.equal(group.probe(), expected_probe), "outputs changed"


async def on_all(calls: list[object]) -> list[object]:
    return list(await asyncio.gather(*calls, return_exceptions=True))  # type: ignore[arg-type]


async def current_revision(group: LocalGroup) -> int:
    async with SidecarClient(group.pods[0].control_url, group.token) as client:
        return max((await client.info()).revisions)


async def test_calls_without_the_right_token_are_refused_and_change_nothing(
    group: LocalGroup,
) -> None:
    before = [snapshot(t) for t in tables(group)]
    request = PrepareRequest(revision=99, layers={0: new_placement(1)[0]})
    for token in ("wrong", ""):
        async with SidecarClient(group.pods[0].control_url, token) as client:
            with pytest.raises(SidecarError) as refused:
                await client.prepare(request)
            assert refused.value.status == 401
    async with aiohttp.ClientSession() as session:
        url = f"{group.pods[0].control_url}/v1/info"
        async with session.get(url) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        async with session.get(f"{group.pods[0].metrics_url}/metrics") as response:
            assert response.status == 200  # Prometheus needs no token
    for table, state in zip(tables(group), before, strict=True):
        assert_unchanged(table, state)


async def test_a_rollout_of_several_layers_moves_weights_between_pods_exactly(
    group: LocalGroup,
) -> None:
    expected = group.probe()
    revision = await current_revision(group) + 1
    layers = new_placement(revision)
    transfer = TransferGroup(session=f"rollout-{revision}", store=group.pods[0].store,
                             ranks=list(range(CONFIG.ranks)))  # fmt: skip
    before = [snapshot(t) for t in tables(group)]
    sidecars = clients(group)
    prepared = await on_all(
        [c.prepare(PrepareRequest(revision=revision, layers=layers, transfer=transfer))
         for c in sidecars]
    )  # fmt: skip
    assert all(not isinstance(r, BaseException) for r in prepared), prepared
    assert sum(layer.bytes_peer for r in prepared for layer in r.layers) > 0  # type: ignore[attr-defined]
    for table, state in zip(tables(group), before, strict=True):
        assert_unchanged(table, state)  # staged only

    committed = await on_all(
        [c.commit(CommitRequest(revision=revision, layers=list(layers))) for c in sidecars]
    )
    assert all(not isinstance(r, BaseException) for r in committed), committed
    for table in tables(group):
        assert table.revisions.tolist() == [revision] * CONFIG.layers
        assert table.routing.tolist() == [layers[layer] for layer in range(CONFIG.layers)]
    assert_invariants(group, expected)

    metrics = urllib.request.urlopen(f"{group.pods[1].metrics_url}/metrics").read().decode()
    assert f'eplb_layer_revision{{layer="2"}} {float(revision)}' in metrics
    assert 'eplb_shuffles_total{phase="commit",result="success"}' in metrics
    assert 'eplb_shuffle_bytes_total{source="peer"}' in metrics
    for client in sidecars:
        await client.close()


async def test_abort_in_the_middle_leaves_every_pod_as_it_was(group: LocalGroup) -> None:
    expected = group.probe()
    revision = await current_revision(group) + 1
    layers = new_placement(100 + revision)
    transfer = TransferGroup(session=f"abort-{revision}", store=group.pods[0].store,
                             ranks=list(range(CONFIG.ranks)))  # fmt: skip
    before = [snapshot(t) for t in tables(group)]
    sidecars = clients(group)
    await on_all([c.prepare(PrepareRequest(revision=revision, layers=layers, transfer=transfer))
                  for c in sidecars])  # fmt: skip
    # The barrier failed (say, one pod timed out): the operator aborts on every pod.
    aborted = await on_all([c.abort(AbortRequest(revision=revision)) for c in sidecars])
    assert all({layer.outcome for layer in r.layers} == {"aborted"} for r in aborted)  # type: ignore[attr-defined]
    for table, state in zip(tables(group), before, strict=True):
        assert_unchanged(table, state)
    infos = await on_all([c.info() for c in sidecars])
    assert all(info.staged == [] for info in infos)  # type: ignore[attr-defined]
    with pytest.raises(SidecarError) as refused:
        await sidecars[0].commit(CommitRequest(revision=revision, layers=[0]))
    assert (refused.value.status, refused.value.problem.reason) == (409, "NotPrepared")
    assert_invariants(group, expected)
    for client in sidecars:
        await client.close()


def _endpoints(group: LocalGroup) -> Groups:
    """The operator's view of the group's pods (controller/endpoints.py)."""
    return {
        "0": {
            pod.rank: PodEndpoint(pod.name, pod.name, "0", pod.rank, "127.0.0.1",
                                  pod.control_port, pod.metrics_port, pod.transfer_port)
            for pod in group.pods
        }
    }  # fmt: skip


def _scripted(*answers: str | None) -> Callable[[], str | None]:
    """A rollout's ``stop`` answering in turn (then None): it is asked before each batch and
    after each batch's prepare barrier."""
    pending = list(answers)
    return lambda: pending.pop(0) if pending else None


async def _roll_out(
    group: LocalGroup, revision: int, target: torch.Tensor, stop: Callable[[], str | None]
) -> RolloutReport:
    """The operator's Rollout (controller/rollout.py) to every pod, a layer per batch."""
    sidecars = {pod.name: SidecarClient(pod.control_url, group.token) for pod in group.pods}

    async def alive(_: PodEndpoint) -> bool:
        return True

    options = RolloutOptions(layers_per_step=1, barrier_timeout=20, progress_deadline=60)
    try:
        return await Rollout(_endpoints(group), sidecars, revision, target, options,
                             pod_alive=alive, stop=stop).run()  # fmt: skip
    finally:
        await asyncio.gather(*(client.close() for client in sidecars.values()))


async def _staged(group: LocalGroup) -> list[object]:
    infos = await on_all([client.info() for client in clients(group)])
    return [staging for info in infos for staging in info.staged]  # type: ignore[attr-defined]


async def test_a_rollout_told_to_stop_aborts_everywhere_and_keeps_whole_layers(
    group: LocalGroup,
) -> None:
    """Its ExpertPlacement deleted (handlers.py), a rollout stops where every pod agrees,
    aborts what it staged on every pod, and each layer is committed everywhere or nowhere;
    the pods then take the next rollout (tests/operator/test_deletion.py: the whole path)."""
    expected = group.probe()
    revision = await current_revision(group) + 1
    start = tables(group)[0].routing.clone()
    target = torch.tensor([new_placement(500 + revision)[layer] for layer in range(CONFIG.layers)])
    assert all(not torch.equal(target[layer], start[layer]) for layer in range(CONFIG.layers))
    # Batch 0 goes through (asked before it and after its prepare); batch 1 is prepared on
    # every pod, then the stop comes.
    with pytest.raises(RolloutAbortedError) as stopped:
        await _roll_out(group, revision, target, _scripted(None, None, None, "PlacementDeleted"))
    assert (stopped.value.reason, stopped.value.layers) == ("PlacementDeleted", [1])
    assert "aborted on every pod" in stopped.value.message
    assert await _staged(group) == []  # every sidecar dropped what it had staged
    routing = tables(group)[0].routing
    assert torch.equal(routing[0], target[0])  # committed before the stop, on every pod
    assert torch.equal(routing[1:], start[1:])  # the last committed placement, unchanged
    assert_invariants(group, expected)  # every pod agrees; weights and outputs exact

    # Stopped before a batch: nothing is staged, nothing changes.
    with pytest.raises(RolloutAbortedError) as early:
        await _roll_out(group, revision + 1, target, _scripted("PlacementDeleted"))
    assert early.value.layers == [] and "stopped before layers [1]" in early.value.message
    assert await _staged(group) == [] and torch.equal(tables(group)[0].routing[1:], start[1:])

    # The same pods take the next rollout (as a new incarnation's, a revision above theirs).
    report = await _roll_out(group, revision + 2, target, _scripted())
    assert report.layers_total == CONFIG.layers - 1
    assert torch.equal(tables(group)[0].routing, target)
    assert_invariants(group, expected)


async def test_a_dead_peer_fails_prepare_then_the_checkpoint_recovers_and_resyncs(
    tmp_path: Path,
) -> None:
    group = start_group(tmp_path)
    try:
        expected = group.probe()
        group.kill(group.pods[3], "sidecar")
        alive = clients(group)[:3]
        layers = new_placement(7)
        before = [snapshot(t) for t in tables(group)]
        everyone = TransferGroup(session="with-dead", store=group.pods[0].store, ranks=[0, 1, 2, 3])
        failed = await on_all([c.prepare(PrepareRequest(revision=1, layers=layers,
                                                        transfer=everyone, timeout_seconds=3))
                               for c in alive])  # fmt: skip
        assert all(isinstance(r, SidecarError) and r.status == 503 for r in failed), failed
        assert all(r.problem.reason == "TransferFailed" for r in failed)  # type: ignore[union-attr]
        for table, state in zip(tables(group), before, strict=True):
            assert_unchanged(table, state)

        # Without rank 3: experts only it held come from the checkpoint.
        survivors = TransferGroup(session="without-3", store=group.pods[0].store, ranks=[0, 1, 2])
        prepared = await on_all([c.prepare(PrepareRequest(revision=1, layers=layers,
                                                          transfer=survivors))
                                 for c in alive])  # fmt: skip
        assert all(not isinstance(r, BaseException) for r in prepared), prepared
        await on_all([c.commit(CommitRequest(revision=1, layers=list(layers))) for c in alive])

        # Rank 3 comes back behind: re-synced alone, from the checkpoint.
        group.start_sidecar(group.pods[3])
        group.wait_ready()
        async with SidecarClient(group.pods[3].control_url, group.token) as back:
            assert (await back.info()).revisions == [0] * CONFIG.layers
            await back.prepare(PrepareRequest(revision=1, layers=layers))
            result = await back.commit(CommitRequest(revision=1, layers=list(layers)))
            assert sum(layer.bytes_checkpoint for layer in result.layers) > 0
        assert_invariants(group, expected)
        for client in alive:
            await client.close()
    finally:
        group.stop()


# -- peers that misbehave during a rollout driven by the operator's rollout code ----------
# One sends a corrupt or truncated expert; one stops answering (SIGSTOP: alive, holding its
# sockets, silent).  The operator's reconcile pass drives Rollout the same way: an aborted
# rollout is tried again on a later pass, in a new transfer session.


def fault_file(group: LocalGroup, rank: int) -> Path:
    return group.workdir / f"fault-{rank}"


async def alive(pod: PodEndpoint) -> bool:
    return True


class StopsAtPrepare(SidecarClient):
    """The operator's client of a pod that stops (SIGSTOP) the moment it is sent a prepare,
    after it answered ``/v1/info``: alive, its sockets open, silent."""

    def __init__(self, url: str, token: str, pid: int) -> None:
        super().__init__(url, token)
        self.pid = pid

    async def prepare(self, request: PrepareRequest) -> Result:
        os.kill(self.pid, signal.SIGSTOP)
        return await super().prepare(request)


async def roll_out(
    group: LocalGroup, target: dict[int, list[int]], barrier: float, stop: int | None = None
) -> int:
    """One attempt, as one reconcile pass makes it; the revision rolled out.  ``stop``: the
    rank whose sidecar stops at its prepare."""
    revision = await current_revision(group) + 1
    rows = torch.tensor([target[layer] for layer in range(CONFIG.layers)])
    clients = {pod.name: SidecarClient(pod.control_url, group.token) for pod in group.pods}
    if stop is not None:
        pod = group.pods[stop]
        assert pod.sidecar is not None
        clients[pod.name] = StopsAtPrepare(pod.control_url, group.token, pod.sidecar.pid)
    options = RolloutOptions(layers_per_step=CONFIG.layers, barrier_timeout=barrier,
                             progress_deadline=60)  # fmt: skip
    try:
        await Rollout(local_endpoints(group), clients, revision, rows, options, alive).run()
    finally:
        await asyncio.gather(*(client.close() for client in clients.values()))
    return revision


async def staged_anywhere(group: LocalGroup, pods: list[int] | None = None) -> list[str]:
    found = []
    for pod in [group.pods[rank] for rank in pods or range(CONFIG.ranks)]:
        async with SidecarClient(pod.control_url, group.token) as client:
            if (await client.info()).staged:
                found.append(pod.name)
    return found


@pytest.mark.parametrize("fault", ["corrupt-send", "truncate-send"])
async def test_a_corrupt_or_truncated_expert_from_a_peer_is_caught_and_the_retry_lands(
    group: LocalGroup, fault: str
) -> None:
    expected = group.probe()
    target = new_placement(len(fault))
    before = [snapshot(t) for t in tables(group)]
    fault_file(group, 1).write_text(fault)  # rank 1 sends one bad payload
    with pytest.raises(RolloutAbortedError) as aborted:
        await roll_out(group, target, barrier=10)
    # A receiver compared the experts with the sender's fingerprints and refused to stage.
    assert aborted.value.reason == "RolloutAborted", aborted.value
    assert "TransferCorrupt" in aborted.value.message, aborted.value.message
    assert "from rank 1 differ from the fingerprints" in aborted.value.message
    assert not fault_file(group, 1).exists()  # it fired
    # Aborted everywhere: no pod serves, or holds staged, anything of the bad transfer.
    for table, state in zip(tables(group), before, strict=True):
        assert_unchanged(table, state)
    assert await staged_anywhere(group) == []

    revision = await roll_out(group, target, barrier=10)  # the next pass, a new session
    for table in tables(group):
        assert table.routing.tolist() == [target[layer] for layer in range(CONFIG.layers)]
        assert table.revisions.tolist() == [revision] * CONFIG.layers
    assert_invariants(group, expected)


async def test_a_stopped_sidecar_times_the_barrier_out_and_the_rollout_lands_after_it_resumes(
    group: LocalGroup,
) -> None:
    expected = group.probe()
    target = new_placement(23)
    before = [snapshot(t) for t in tables(group)]
    stopped = group.pods[2].sidecar
    assert stopped is not None
    barrier = 2.0
    # A partition of the pod, as its peers see it: connections accepted by the kernel,
    # never answered (the transfer port and the control port alike).
    try:
        started = time.monotonic()
        with pytest.raises(RolloutAbortedError) as aborted:
            await roll_out(group, target, barrier=barrier, stop=2)
        # The barrier (plus the operator's margins for the prepare and the abort calls).
        assert time.monotonic() - started < 2 * barrier + 15 + 5
        assert aborted.value.reason == "BarrierTimeout", aborted.value
        for table, state in zip(tables(group), before, strict=True):
            assert_unchanged(table, state)
        assert await staged_anywhere(group, [0, 1, 3]) == []
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    # The resumed sidecar first works off the calls it was sent while stopped (its prepare
    # cannot join the poisoned session); the operator's passes try again until one lands.
    for _attempt in range(10):
        try:
            revision = await roll_out(group, target, barrier=5)
            break
        except RolloutAbortedError as error:
            assert error.reason in ("BarrierTimeout", "RolloutAborted"), error
            await asyncio.sleep(1)
    else:
        raise AssertionError("the rollout never landed after SIGCONT")
    for table in tables(group):
        assert table.revisions.tolist() == [revision] * CONFIG.layers
    assert await staged_anywhere(group) == []
    assert_invariants(group, expected)
