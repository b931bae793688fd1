"""Rolling a placement out to every pod, a batch of layers at a time, with all-pod barriers.

For each batch: ``prepare`` on every pod of every group in parallel (experts move between
the pods of one group only) → barrier: every pod prepared within the timeout, or ``abort``
on every pod and the batch stays on its current placement → ``commit`` on every pod; a
commit that fails on a pod that still exists is retried (re-preparing from the checkpoint
when the sidecar lost its staging) until it lands or the pod is gone.

Level-triggered: what each pod serves is read from the pods (``/v1/info``), not
remembered, so a rollout resumed after an operator restart continues from where the pods
are, and only layers that differ from the target are touched.  A pod whose layers differ
while the rest of its group agree (it restarted) is re-synced alone from its checkpoint.

Progress is a stream of events (:meth:`Rollout.events`): a :class:`BatchCommitted` after each
batch, then :class:`RolloutFinished`.  The caller records each, and pauses the rollout
between batches by no longer asking for the next event.

A rollout asked to stop (``stop`` returns a reason: its ExpertPlacement is being deleted)
stops at the next point where every pod agrees: before a batch, or after a batch's prepare
barrier, which it then aborts on every pod instead of committing.  A prepare in flight is
waited for, not cancelled: a sidecar finishes a prepare it received, so an abort sent
before it returned could land first and leave the staging behind.  A commit phase that has
begun is finished (some pods may have committed already), so no layer is left half-applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import torch

from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.controller.sessions import Members, TransferSessions
from eplb_sidecar.api import (
    AbortRequest,
    CommitRequest,
    Info,
    PrepareRequest,
    Reason,
    Result,
    TransferGroup,
)
from eplb_sidecar.client import SidecarClient, SidecarError

Groups = dict[str, dict[int, PodEndpoint]]


class RolloutAbortedError(RuntimeError):
    """A batch did not pass its barrier and was aborted everywhere."""

    def __init__(self, reason: str, message: str, layers: list[int]) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.layers = layers


@dataclass
class BatchReport:
    layers: list[int]
    prepare_seconds: float
    commit_seconds: float
    moves: int
    bytes_peer: int


@dataclass
class RolloutReport:
    """What a rollout did."""

    revision: int
    layers_total: int
    batches: list[BatchReport] = field(default_factory=list)
    dropped_pods: list[str] = field(default_factory=list)
    # Layers an interrupted attempt of the same rollout committed before (a resumed rollout
    # reports progress of the whole rollout, not of what was left).
    layers_before: int = 0

    @property
    def layers_committed(self) -> int:
        return self.layers_before + sum(len(batch.layers) for batch in self.batches)

    @property
    def moves(self) -> int:
        return sum(batch.moves for batch in self.batches)


@dataclass(frozen=True)
class BatchCommitted:
    """A batch is in service on every pod; ``more``: batches remain (a caller that stops
    asking for events now pauses the rollout here)."""

    batch: BatchReport
    layers_committed: int  # of the whole rollout, an interrupted attempt's included
    layers_total: int
    more: bool


@dataclass(frozen=True)
class RolloutFinished:
    """Every pod serves the target."""

    report: RolloutReport


RolloutEvent = BatchCommitted | RolloutFinished


@dataclass
class RolloutOptions:
    layers_per_step: int
    barrier_timeout: float
    progress_deadline: float
    commit_retry_seconds: float = 0.5


@dataclass
class _PodWork:
    """One pod's share of a batch: layers staged with its group, layers re-synced alone."""

    pod: PodEndpoint
    with_group: dict[int, list[int]] = field(default_factory=dict)
    alone: dict[int, list[int]] = field(default_factory=dict)
    session: str = ""  # the transfer session of its group's layers (sessions.py)

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.with_group) | set(self.alone))


async def pod_states(
    groups: Groups, clients: dict[str, SidecarClient], placement: bool = True
) -> dict[str, Info]:
    """``/v1/info`` of every pod, with its placement unless told otherwise (raises
    SidecarError for the first failure)."""
    pods = [pod for members in groups.values() for pod in members.values()]
    infos = await asyncio.gather(*(clients[pod.name].info(placement=placement) for pod in pods))
    return {pod.name: info for pod, info in zip(pods, infos, strict=True)}


def carried_forward(
    before: Info, now: Info, batch: list[int], revision: int, rows: list[list[int]]
) -> Info | None:
    """``now`` (read without its placement) with the placement ``before`` had and ``batch``'s
    target ``rows`` where the pod now serves ``revision``; None (read it again) unless that
    accounts for every layer: the same sidecar process, and every layer outside the batch at
    the revision it had.  A layer's routing changes only with a commit, which sets a newer
    revision, so an unchanged revision of one process means an unchanged row."""
    if before.placement is None or not now.incarnation or now.incarnation != before.incarnation:
        return None
    placement = list(before.placement)
    for layer, (was, serves) in enumerate(zip(before.revisions, now.revisions, strict=True)):
        if serves == was:
            continue
        if serves != revision or layer not in batch:
            return None
        placement[layer] = rows[layer]
    return now.model_copy(update={"placement": placement})


def _members(members: dict[int, PodEndpoint], states: dict[str, Info], timeout: float) -> Members:
    """What a kept transfer group of ``members`` must still match (sessions.py)."""
    return (
        tuple(
            (rank, pod.uid, pod.store, states[pod.name].incarnation)
            for rank, pod in sorted(members.items())
        ),
        timeout,
    )


def pending_layers(states: dict[str, Info], target: torch.Tensor) -> list[int]:
    """Layers some pod serves differently from ``target`` ``[L, P]``."""
    rows = target.tolist()
    return [
        layer
        for layer in range(target.shape[0])
        if any(info.placement is not None and info.placement[layer] != rows[layer]
               for info in states.values())
    ]  # fmt: skip


class Rollout:
    """One rollout of ``target`` ``[L, P]`` as ``revision`` to every pod of ``groups``."""

    def __init__(
        self,
        groups: Groups,
        clients: dict[str, SidecarClient],
        revision: int,
        target: torch.Tensor,
        options: RolloutOptions,
        pod_alive: Callable[[PodEndpoint], Awaitable[bool]],
        resumed_total: int = 0,
        stop: Callable[[], str | None] = lambda: None,
        sessions: TransferSessions | None = None,
    ) -> None:
        """``pod_alive``: whether a pod whose commit failed still exists (else it is dropped
        and re-synced when it returns); ``resumed_total``: the layers this rollout had in all
        when it was interrupted (from the status), 0 for a new rollout; ``stop``: a reason once
        the rollout must stop (raised as :class:`RolloutAbortedError` with that reason), else
        None; ``sessions``: the placement's transfer sessions, kept across its rollouts (a
        new set, used by this rollout only, when None)."""
        self.groups = groups
        self.resumed_total = resumed_total
        self.clients = clients
        self.revision = revision
        self.target = target
        self.rows: list[list[int]] = target.tolist()
        self.options = options
        self.pod_alive = pod_alive
        self.stop = stop
        self.sessions = sessions if sessions is not None else TransferSessions()

    async def events(self) -> AsyncGenerator[RolloutEvent, None]:
        """Roll out batch by batch, yielding progress (raises :class:`RolloutAbortedError`).

        The next batch starts only when the caller asks for the next event; close the
        iterator (``contextlib.aclosing``) to stop between batches.
        """
        try:
            async with contextlib.aclosing(self._batches()) as batches:
                async for event in batches:
                    yield event
        except GeneratorExit:  # closed between batches: every pod finished every batch
            raise
        except BaseException:
            # A batch that failed or was cancelled may leave the members of a group at
            # different points of its collective sequence.
            self.sessions.discard_all()
            raise

    async def _batches(self) -> AsyncGenerator[RolloutEvent, None]:
        started = time.monotonic()
        states = await self._states()
        await self._drop_stale_staging(states)
        layers = pending_layers(states, self.target)
        total = max(self.resumed_total, len(layers))
        report = RolloutReport(self.revision, total, layers_before=total - len(layers))
        step = self.options.layers_per_step
        for index in range(0, len(layers), step):
            batch = layers[index : index + step]
            stopping = self.stop()
            if stopping is not None:  # nothing is staged between batches
                raise RolloutAbortedError(stopping, f"stopped before layers {batch}", [])
            work = self._plan_batch(batch, states)
            batch_report = await self._run_batch(batch, work, report, started)
            report.batches.append(batch_report)
            more = index + step < len(layers)
            yield BatchCommitted(batch_report, report.layers_committed, total, more)
            if more:
                states = await self._states_after(batch, states)
        yield RolloutFinished(report)

    async def run(self) -> RolloutReport:
        """The whole rollout, without pausing (benchmarks and tools)."""
        async with contextlib.aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, RolloutFinished):
                    return event.report
        raise AssertionError("a rollout's events end with RolloutFinished")

    # -- planning a batch ------------------------------------------------------------------
    def _plan_batch(self, batch: list[int], states: dict[str, Info]) -> list[_PodWork]:
        work: dict[str, _PodWork] = {}  # by pod name: a lookup per (layer, pod), not a scan
        for group, members in self.groups.items():
            for layer in batch:
                target = self.rows[layer]
                rows = {
                    pod.name: (states[pod.name].placement or [])[layer] for pod in members.values()
                }
                agree = len({tuple(row) for row in rows.values()}) == 1
                for pod in members.values():
                    if rows[pod.name] == target:
                        continue
                    share = work.setdefault(pod.name, _PodWork(pod))
                    (share.with_group if agree else share.alone)[layer] = target
            shares = [work[pod.name] for pod in members.values() if pod.name in work]
            together = [share for share in shares if share.with_group]
            if together:  # one session for the group's transfers in this batch
                key = _members(members, states, self.options.barrier_timeout)
                for share in together:
                    share.session = self.sessions.session(group, key)
        return list(work.values())

    # -- one batch -------------------------------------------------------------------------
    async def _run_batch(
        self,
        batch: list[int],
        work: list[_PodWork],
        report: RolloutReport,
        started: float,
    ) -> BatchReport:
        prepare_started = time.monotonic()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(self._prepare(share) for share in work)),
                self.options.barrier_timeout + 5,
            )
        except (TimeoutError, SidecarError) as error:
            await self._abort_everywhere(work)
            if isinstance(error, SidecarError):
                # A peer that did not join is a pod that missed the barrier.
                transfer = error.problem.reason == Reason.TRANSFER_FAILED
                reason = "BarrierTimeout" if transfer else "RolloutAborted"
                message = f"pod {error.url}: {error.problem.reason}: {error.problem.message}"
            else:
                reason = "BarrierTimeout"
                message = f"not every pod prepared within {self.options.barrier_timeout:g} s"
            raise RolloutAbortedError(reason, f"layers {batch}: {message}", batch) from error
        prepare_seconds = time.monotonic() - prepare_started
        stopping = self.stop()
        if stopping is not None:  # every pod prepared: the last point before pods could differ
            await self._abort_everywhere(work)
            raise RolloutAbortedError(
                stopping, f"layers {batch}: stopped after prepare; aborted on every pod", batch
            )

        commit_started = time.monotonic()
        await self._commit_everywhere(work, report, started)
        moves = sum(layer.moves for result in results for r in result for layer in r.layers)
        peer = sum(layer.bytes_peer for result in results for r in result for layer in r.layers)
        return BatchReport(batch, prepare_seconds, time.monotonic() - commit_started, moves, peer)

    async def _prepare(self, share: _PodWork) -> list[Result]:
        client = self.clients[share.pod.name]
        timeout = self.options.barrier_timeout
        results = []
        if share.with_group:
            members = self.groups[share.pod.group]
            transfer = TransferGroup(
                # One process group per EP group, reused by every batch and by later
                # rollouts (sessions.py): every pod of a group takes part in each batch that
                # changes the group (all pods hold the whole routing table).
                session=share.session,
                store=members[min(members)].store,
                ranks=sorted(members),
                secret=self.sessions.secret,
            )
            results.append(
                await client.prepare(
                    PrepareRequest(
                        revision=self.revision,
                        layers=share.with_group,
                        transfer=transfer,
                        timeout_seconds=timeout,
                    )
                )
            )
        if share.alone:
            results.append(
                await client.prepare(
                    PrepareRequest(
                        revision=self.revision, layers=share.alone, timeout_seconds=timeout
                    )
                )
            )
        return results

    async def _abort_everywhere(self, work: list[_PodWork]) -> None:
        async def abort(share: _PodWork) -> None:
            # A dead pod has nothing staged; a live one that misses this is cleaned up by the
            # next rollout (it aborts whatever pods report staged before it starts).
            with contextlib.suppress(TimeoutError, SidecarError):
                await asyncio.wait_for(
                    self.clients[share.pod.name].abort(
                        AbortRequest(revision=self.revision, layers=share.layers)
                    ),
                    self.options.barrier_timeout + 10,
                )

        await asyncio.gather(*(abort(share) for share in work))

    async def _commit_everywhere(
        self, work: list[_PodWork], report: RolloutReport, started: float
    ) -> None:
        pending = list(work)
        while pending:
            outcomes = await asyncio.gather(
                *(self._commit(share) for share in pending), return_exceptions=True
            )
            failed = [s for s, o in zip(pending, outcomes, strict=True) if o is not True]
            pending = []
            for share in failed:
                self.sessions.discard(share.pod.group)
                if not await self.pod_alive(share.pod):
                    report.dropped_pods.append(share.pod.name)  # re-synced when it returns
                    continue
                pending.append(share)
            if pending:
                if time.monotonic() - started > self.options.progress_deadline:
                    names = [share.pod.name for share in pending]
                    raise RolloutAbortedError(
                        "ProgressDeadlineExceeded",
                        f"commit keeps failing on pods {names}",
                        sorted({layer for share in pending for layer in share.layers}),
                    )
                await asyncio.sleep(self.options.commit_retry_seconds)

    async def _commit(self, share: _PodWork) -> bool:
        """Commit ``share`` on its pod; True once the pod serves the target for its layers."""
        client = self.clients[share.pod.name]
        try:
            await client.commit(CommitRequest(revision=self.revision, layers=share.layers))
            return True
        except SidecarError as error:
            if error.problem.reason != Reason.NOT_PREPARED:
                return False
        # The sidecar lost its staging (it restarted between prepare and commit): unless the
        # pod already serves the target, stage again from its checkpoint, then commit.
        info = await client.info(placement=True)
        missing = {
            layer: self.rows[layer]
            for layer in share.layers
            if info.placement is None or info.placement[layer] != self.rows[layer]
        }
        if not missing:
            return True
        await client.abort(AbortRequest(revision=self.revision, layers=list(missing)))
        await client.prepare(PrepareRequest(revision=self.revision, layers=missing))
        await client.commit(CommitRequest(revision=self.revision, layers=list(missing)))
        return True

    # -- pod state -------------------------------------------------------------------------
    async def _states(self, placement: bool = True) -> dict[str, Info]:
        try:
            return await pod_states(self.groups, self.clients, placement)
        except SidecarError as error:
            raise RolloutAbortedError(
                "PodsNotReady", f"{error.url}: {error.problem.message}", []
            ) from error

    async def _states_after(self, batch: list[int], before: dict[str, Info]) -> dict[str, Info]:
        """The pods' states after ``batch``: their placements carried forward from
        ``before`` when their revisions show what changed (:func:`carried_forward`), else
        read again.  Reading every pod's whole ``[L, P]`` placement between batches cost
        more than the batch's own requests at 32 pods."""
        brief = await self._states(placement=False)
        carried = {
            name: carried_forward(before[name], info, batch, self.revision, self.rows)
            for name, info in brief.items()
        }
        if all(info is not None for info in carried.values()):
            return {name: info for name, info in carried.items() if info is not None}
        return await self._states()

    async def _drop_stale_staging(self, states: dict[str, Info]) -> None:
        """Abort what an interrupted rollout left staged, so every pod starts clean."""
        calls = []
        for name, info in states.items():
            for staged in info.staged:
                calls.append(
                    self.clients[name].abort(
                        AbortRequest(revision=staged.revision, layers=staged.layers)
                    )
                )
        if calls:
            await asyncio.gather(*calls)
