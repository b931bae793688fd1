"""Peers that misbehave during a rollout: one sends a corrupt or truncated expert, one stops
answering (SIGSTOP: alive, holding its sockets, silent).

Four real pods (engine + sidecar processes) exchanging weights through gloo, driven by the
operator's own rollout code (:class:`~eplb_operator.controller.rollout.Rollout`), as the
operator's reconcile pass drives it: an aborted rollout is tried again on a later pass with a
new transfer session.  Each test ends with DESIGN.md §5 on every pod.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eplb_local.world.endpoints import local_endpoints
from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.controller.rollout import Rollout, RolloutAbortedError, RolloutOptions
from eplb_sidecar.api import PrepareRequest, Result
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.launch import LocalGroup
from eplb_sidecar.server import FAULT_FILE_ENV

from .conftest import assert_unchanged, snapshot
from .test_pods import CONFIG, assert_invariants, current_revision, new_placement, tables

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGroup]:
    workdir = tmp_path_factory.mktemp("peer-faults")
    write_checkpoint(workdir / "checkpoint", CONFIG)
    faults = {rank: {FAULT_FILE_ENV: str(workdir / f"fault-{rank}")} for rank in range(4)}
    pods = LocalGroup(CONFIG, workdir, checkpoint=workdir / "checkpoint", sidecar_env=faults)
    yield pods.start()
    pods.stop()


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
