"""A rollout reports its progress as events, batch by batch; a caller that stops asking for
events pauses it between batches, and a new rollout resumes from where the pods are.

Two real sidecar processes (no engines, no Kubernetes): what the reconciler does with the
events (status, the pause) is tested end to end in test_offline.py and test_reconcile*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
import torch

from eplb_local.engine.verify import group_errors
from eplb_local.launch import LocalGroup
from eplb_local.world.endpoints import local_endpoints
from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.controller.rollout import (
    BatchCommitted,
    Rollout,
    RolloutEvent,
    RolloutFinished,
    RolloutOptions,
)
from eplb_operator.controller.sessions import TransferSessions
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig

from ..sidecar.test_executor import rebalanced

pytestmark = pytest.mark.slow

CONFIG = EngineConfig(ranks=2, layers=4, experts=6, slots_per_rank=4, hidden=8, intermediate=8)
OPTIONS = RolloutOptions(layers_per_step=1, barrier_timeout=30, progress_deadline=120)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGroup]:
    with LocalGroup(
        CONFIG, tmp_path_factory.mktemp("rollout-events"), serve_engines=False
    ) as started:
        yield started


async def always(pod: PodEndpoint) -> bool:
    return True


async def served(clients: dict[str, SidecarClient]) -> list[tuple[list[list[int]], int]]:
    """Each pod's ``[L, P]`` placement and how many layers it has staged."""
    infos = await asyncio.gather(*(client.info(placement=True) for client in clients.values()))
    return [(info.placement or [], sum(len(s.layers) for s in info.staged)) for info in infos]


async def fresh_target(clients: dict[str, SidecarClient], seed: int) -> tuple[int, torch.Tensor]:
    """A revision newer than any pod serves, and a placement ``[L, P]`` that changes every
    layer of every pod."""
    infos = await asyncio.gather(*(client.info(placement=True) for client in clients.values()))
    target = rebalanced(CONFIG, seed=seed)
    assert all(info.placement is not None and (torch.tensor(info.placement) != target).any(1).all()
               for info in infos)  # fmt: skip
    return max(max(info.revisions) for info in infos) + 1, target


@pytest.fixture
async def clients(group: LocalGroup) -> AsyncIterator[dict[str, SidecarClient]]:
    opened = {pod.name: SidecarClient(pod.control_url, group.token) for pod in group.pods}
    yield opened
    for client in opened.values():
        await client.close()


async def test_stopping_between_batches_pauses_and_a_new_rollout_resumes(
    group: LocalGroup, clients: dict[str, SidecarClient]
) -> None:
    revision, target = await fresh_target(clients, seed=3)
    groups = local_endpoints(group)
    first = Rollout(groups, clients, revision, target, OPTIONS, pod_alive=always)
    async with contextlib.aclosing(first.events()) as events:
        event = await anext(events)
    assert isinstance(event, BatchCommitted)
    assert (event.layers_committed, event.layers_total, event.more) == (1, 4, True)
    assert event.batch.layers == [0] and event.batch.moves > 0

    # Paused after one batch: layer 0 serves the target on every pod, no other layer
    # changed, and nothing is left staged.
    rows = target.tolist()
    for placement, staged in await served(clients):
        assert placement[0] == rows[0] and staged == 0
        assert all(placement[layer] != rows[layer] for layer in (1, 2, 3))

    second = Rollout(groups, clients, revision, target, OPTIONS, pod_alive=always,
                     resumed_total=4)  # fmt: skip
    seen: list[RolloutEvent] = [event async for event in second.events()]
    batches = [e for e in seen if isinstance(e, BatchCommitted)]
    assert [(e.batch.layers, e.layers_committed, e.more) for e in batches] == [
        ([1], 2, True),
        ([2], 3, True),
        ([3], 4, False),
    ]
    assert isinstance(seen[-1], RolloutFinished) and len(seen) == 4
    report = seen[-1].report
    assert (report.layers_before, report.layers_committed, report.layers_total) == (1, 4, 4)
    assert report.moves == sum(e.batch.moves for e in batches)
    for placement, staged in await served(clients):
        assert placement == rows and staged == 0

    # Nothing left to do: one more pass finishes at once, without a batch.
    assert [type(e) for e in [e async for e in second.events()]] == [RolloutFinished]


async def test_run_follows_the_whole_stream(
    group: LocalGroup, clients: dict[str, SidecarClient]
) -> None:
    """``run()`` (benchmarks, tools) takes every batch, never pausing."""
    revision, target = await fresh_target(clients, seed=5)
    options = RolloutOptions(layers_per_step=3, barrier_timeout=30, progress_deadline=120)
    rollout = Rollout(local_endpoints(group), clients, revision, target, options, pod_alive=always)
    report = await rollout.run()
    assert [batch.layers for batch in report.batches] == [[0, 1, 2], [3]]
    assert report.layers_committed == 4
    assert all(placement == target.tolist() for placement, _ in await served(clients))


def invariant_errors(group: LocalGroup) -> list[str]:
    """DESIGN.md §5 on the pods' tables: one placement, every expert replicated, every slot
    exactly its expert's weights (these sidecars serve no engine, so no model outputs)."""
    tables = [ExpertTable.attach(pod.table_dir) for pod in group.pods]
    try:
        return group_errors(tables, CONFIG.seed)
    finally:
        for table in tables:
            table.close()


async def test_later_rollouts_reuse_the_transfer_session_until_a_sidecar_restarts(
    group: LocalGroup, clients: dict[str, SidecarClient]
) -> None:
    """The placement's sessions (kept by the operator across its rollouts) name the group
    the sidecars built for the first rollout, so a later rollout builds none; a sidecar that
    started again lost that group, so the next rollout names a new session rather than
    waiting at the barrier for a group that is gone."""
    sessions, groups = TransferSessions(), local_endpoints(group)
    for seed in (7, 8):
        revision, target = await fresh_target(clients, seed)
        report = await Rollout(groups, clients, revision, target, OPTIONS, pod_alive=always,
                               sessions=sessions).run()  # fmt: skip
        assert sum(b.bytes_peer for b in report.batches) > 0  # experts crossed pods
        assert all(placement == target.tolist() for placement, _ in await served(clients))
        assert sessions.started == 1  # the second rollout reused the first one's group
        assert not invariant_errors(group)

    restarted = group.pods[0]  # the store's host: its peer still holds the old group
    group.kill(restarted, "sidecar")
    group.start_sidecar(restarted)
    group.wait_ready()
    revision, target = await fresh_target(clients, seed=9)
    quick = RolloutOptions(layers_per_step=2, barrier_timeout=OPTIONS.barrier_timeout,
                           progress_deadline=30)  # fmt: skip
    report = await Rollout(groups, clients, revision, target, quick, pod_alive=always,
                           sessions=sessions).run()  # fmt: skip
    assert report.moves > 0 and sessions.started == 2
    assert all(placement == target.tolist() for placement, _ in await served(clients))
    assert not invariant_errors(group)


async def test_a_rollout_cancelled_mid_batch_never_reuses_its_session(
    group: LocalGroup, clients: dict[str, SidecarClient]
) -> None:
    """An operator that dies inside a batch may leave the group's members at different
    points of its collective sequence: the next rollout starts a new session.  One paused
    between batches (every pod finished every batch) keeps it."""
    sessions, groups = TransferSessions(), local_endpoints(group)
    revision, target = await fresh_target(clients, seed=11)
    first = Rollout(groups, clients, revision, target, OPTIONS, pod_alive=always,
                    sessions=sessions)  # fmt: skip
    async with contextlib.aclosing(first.events()) as events:
        assert isinstance(await anext(events), BatchCommitted)  # then paused
    paused = Rollout(groups, clients, revision, target, OPTIONS, pod_alive=always,
                     resumed_total=4, sessions=sessions)  # fmt: skip
    events = paused.events()
    assert isinstance(await anext(events), BatchCommitted)
    assert sessions.started == 1
    step = asyncio.ensure_future(anext(events))
    for _ in range(3):  # into the next batch's requests
        await asyncio.sleep(0)
    step.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await step
    assert step.cancelled()
    resumed = Rollout(groups, clients, revision, target, OPTIONS, pod_alive=always,
                      resumed_total=4, sessions=sessions)  # fmt: skip
    assert (await resumed.run()).layers_committed == 4
    assert sessions.started == 2
    assert all(placement == target.tolist() for placement, _ in await served(clients))
    assert not invariant_errors(group)
