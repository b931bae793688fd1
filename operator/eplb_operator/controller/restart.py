"""One reconcile pass of an ExpertPlacement whose rollout strategy is ``Restart``.

For engines that take a placement only at start-up (SGLang, TensorRT-LLM, vLLM):
1. Observe: the selector's pods by EP group, each group's workload (``spec.workloadRef``)
   and the revision its pod template is stamped with.
2. Decide the target as a hot-swap pass does — a rollout in progress, a pinned revision
   (rollback), a new offline mapping, an online rebalance that is due, past
   ``rollout.minIntervalSeconds`` since the last one and passing the per-layer gate — or,
   when some group's workload is stamped with another revision than the current one (a
   ``helm upgrade``, an aborted rollout), the current revision again.
3. Act on :func:`~.restart_decide.next_restart`: render the target's start-up file into its
   ConfigMap (:mod:`.restart_files`), stamp one group's workload at a time (a
   LeaderWorkerSet, which holds every group: its templates, and its partition lowered one
   group at a time), wait for it to come back, abort when it is not back within
   ``rollout.progressDeadlineSeconds``.
Status ``groups`` says which revision each group serves; Events mark each group.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from dataclasses import dataclass
from typing import Any

import torch

from eplb_core.errors import InvalidInputError
from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller import kube, messages, restart_kube
from eplb_operator.controller.conditions import ConditionStatus, now_rfc3339
from eplb_operator.controller.decide import Cause
from eplb_operator.controller.loads import MetricsUnavailableError, ScrapeSource
from eplb_operator.controller.metrics import METRICS, RolloutResult
from eplb_operator.controller.reconcile import (
    RECHECK_SECONDS,
    RETRY_AFTER_ABORT_SECONDS,
    Reconciler,
)
from eplb_operator.controller.restart_decide import GroupView, Step, next_restart, overdue
from eplb_operator.controller.restart_files import (
    FILE_KEYS,
    config_map_body,
    config_map_name,
    startup_file,
    startup_revision,
)
from eplb_operator.controller.restart_loads import read_engine_window
from eplb_operator.controller.restart_pods import (
    LEADER_WORKER_SET,
    group_size,
    lws_group_index,
    lws_group_stamp,
    lws_partition,
    pod_view,
    pods_by_group,
    stamped_revision,
    workload_problem,
)
from eplb_operator.controller.revisions import Revision, parse_revision, revision_name
from eplb_operator.placement import PlanOptions, plan, views

POLL_SECONDS = 1.0  # while a group restarts: how soon to look again


@dataclass(frozen=True)
class Target:
    """The revision groups are brought to: 0 is the engines' start-up placement."""

    number: int
    name: str
    placement: torch.Tensor  # [L, P]
    load: torch.Tensor | None  # [L, E] it was planned from
    cause: Cause
    revision: Revision | None = None  # the stored one (None for revision 0)


class RestartPass:
    def __init__(
        self,
        reconciler: Reconciler,
        obj: dict[str, Any],
        spec: ExpertPlacementSpec,
        status: dict[str, Any],
    ) -> None:
        self.r = reconciler
        self.obj = obj
        self.spec = spec
        self.status = status
        self.namespace = reconciler.namespace
        self.name = reconciler.name
        assert spec.workload_ref is not None  # the CEL rules require it for Restart
        self.ref = spec.workload_ref
        # One workload for every group (a LeaderWorkerSet): its rolling update's partition
        # admits one group at a time, from the highest index down, each once the one before
        # is back by this rollout's measure — every pod Ready. (Its own maxUnavailable counts
        # a group back once its workers' pods exist, Ready or not: two groups could be down.)
        self.shared = self.ref.kind == LEADER_WORKER_SET

    # -- the pass ------------------------------------------------------------------------
    async def run(self) -> float:
        spec = self.spec
        try:
            await self._ensure_file(0, *startup_revision(spec))
        except InvalidInputError as error:
            return await self.r.degraded("InvalidSpec", f"start-up file: {error}")
        if spec.rollout.paused:  # pods can still start (their file is there); nothing rolls
            message = "spec.rollout.paused is set"
            await self.r._write(
                {"Progressing": (ConditionStatus.FALSE, "Paused", message)}, phase="Paused"
            )
            return RECHECK_SECONDS
        pods = await kube.list_pods(self.namespace, spec.selector.to_query())
        known = [g["name"] for g in self.status.get("groups") or [] if g.get("name")]
        by_group, problems = pods_by_group(pods, spec, known)
        if problems:
            return await self.r.degraded("PodsInconsistent", "; ".join(problems))
        if self.shared:
            # One LeaderWorkerSet holds every group: its groups are named <lws>-<index>.
            foreign = sorted(g for g in by_group if not g.startswith(f"{self.ref.name}-"))
            if foreign:
                return await self.r.degraded(
                    "InvalidSpec",
                    f"workloadRef names LeaderWorkerSet {self.ref.name}, but the selector's "
                    f"pods form groups {foreign} of another",
                )  # fmt: skip
        elif "{group}" not in self.ref.name and len(by_group) > 1:
            return await self.r.degraded(
                "InvalidSpec",
                f"workloadRef.name {self.ref.name!r} names one workload, but the pods form "
                f"{len(by_group)} groups {sorted(by_group)}: put {{group}} in it",
            )
        groups = []
        shared: dict[str, Any] | None = None  # the LeaderWorkerSet, when it holds them all
        for group, members in sorted(by_group.items()):
            workload_name = self.ref.name_of(group)
            workload = await restart_kube.get_workload(self.namespace, self.ref.kind, workload_name)
            if workload is None and not members:
                continue  # a group of an earlier pass, removed since: pods and workload gone
            problem = (
                f"{self.ref.kind} {workload_name} (group {group}) does not exist"
                if workload is None
                else workload_problem(workload, self.ref.kind)
            )
            if problem is not None:
                return await self.r.degraded("InvalidSpec", f"workloadRef: {problem}")
            assert workload is not None
            size = group_size(workload, self.ref.kind)
            views = [pod_view(p) for p in members]
            stamped = (
                lws_group_stamp(workload, lws_group_index(group, workload_name), views)
                if self.shared
                else stamped_revision(workload, self.ref.kind)
            )
            groups.append(GroupView(group, size, views, stamped))
            shared = workload
        try:
            target = await self._target(pods, by_group, groups)
        except MetricsUnavailableError as error:
            METRICS.errors.labels(**self.r.labels, reason="MetricsUnavailable").inc()
            return await self.r._degraded("MetricsUnavailable", str(error), keep_ready=True)
        except InvalidInputError as error:
            return await self.r.degraded("InvalidSpec", str(error))
        if target is None:
            return await self._idle(groups)
        try:
            await self._ensure_file(target.number, target.placement, target.load)
        except InvalidInputError as error:
            return await self.r.degraded("InvalidSpec", f"{target.name}: {error}")
        return await self._act(target, groups, shared)

    # -- deciding ------------------------------------------------------------------------
    async def _target(
        self,
        pods: list[dict[str, Any]],
        by_group: dict[str, list[dict[str, Any]]],
        groups: list[GroupView],
    ) -> Target | None:
        """What to bring the groups to; None when they are where they should be."""
        spec, status = self.spec, self.status
        revisions = [
            parse_revision(r) for r in await kube.list_revisions(self.namespace, self.name)
        ]
        by_name = {r.name: r for r in revisions}
        current = by_name.get(status.get("currentRevision") or "")
        if status.get("targetRevision") in by_name:
            return self._stored(by_name[status["targetRevision"]], Cause.CONTINUE)
        if time.monotonic() < self.r.memo.retry_after:
            # Just aborted: the groups go back to the last stable revision (as Argo Rollouts'
            # abort does), and the aborted target waits, rather than failing again at once.
            return self._settled(current, groups)
        if spec.pinned_revision is not None:
            pinned = by_name.get(revision_name(self.name, spec.pinned_revision))
            if pinned is None:
                kept = sorted(r.number for r in revisions)
                raise InvalidInputError(
                    f"pinnedRevision {spec.pinned_revision} is not stored (kept: {kept})"
                )
            if current is not None and torch.equal(current.placement, pinned.placement):
                return self._settled(current, groups)
            # Like a Deployment's rollback: the old placement as a new, newer revision.
            rollback = await self.r._create_revision(
                self.obj, revisions, pinned.placement, pinned.load, "rollback",
                pinned.predicted_balancedness, 0, None,
            )  # fmt: skip
            return self._stored(rollback, Cause.ROLLBACK)
        if spec.offline is not None:
            try:
                offline = await self.r._offline(self.obj, spec, revisions, current)
            except (InvalidInputError, KeyError, kube.ApiException) as error:
                raise InvalidInputError(f"offline mapping: {error}") from None
            if offline is not None:
                return self._stored(offline, Cause.OFFLINE)
        if spec.online is not None and all(group.ready for group in groups):
            # (while a group is down its load is missing; it is planned for when it is back)
            online = await self._online(pods, by_group, revisions, current)
            if online is not None:
                return self._stored(online, Cause.ONLINE_DUE)
        return self._settled(current, groups)

    def _stored(self, revision: Revision, cause: Cause) -> Target:
        return Target(revision.number, revision.name, revision.placement, revision.load, cause,
                      revision)  # fmt: skip

    def _served(self, current: Revision | None) -> Target:
        """The current revision, or revision 0 (the start-up placement) before any."""
        if current is not None:
            return self._stored(current, Cause.RESYNC)
        placement, load = startup_revision(self.spec)
        return Target(0, revision_name(self.name, 0), placement, load, Cause.RESYNC)

    def _settled(self, current: Revision | None, groups: list[GroupView]) -> Target | None:
        """The current revision again where some group's workload is stamped otherwise
        (an aborted rollout, a ``helm upgrade`` of the serving chart); else None."""
        served = self._served(current)
        return None if all(g.stamped == served.number for g in groups) else served

    async def _online(
        self,
        pods: list[dict[str, Any]],
        by_group: dict[str, list[dict[str, Any]]],
        revisions: list[Revision],
        current: Revision | None,
    ) -> Revision | None:
        """A new revision when a rebalance is due, allowed by the minimum interval, and
        changes some layer (the per-layer gate)."""
        spec, memo = self.spec, self.r.memo
        assert spec.online is not None
        trigger = spec.rebalance.id if spec.rebalance else None
        triggered = trigger is not None and trigger != self.status.get("observedRebalanceId")
        now = time.monotonic()
        if not triggered and (now < memo.next_online or self._within_min_interval()):
            return None
        if memo.scrape is None:
            memo.scrape = ScrapeSource(timeout=spec.metrics.timeout_seconds)
        live = {group: [p["metadata"]["name"] for p in members
                        if "deletionTimestamp" not in p["metadata"]]
                for group, members in by_group.items()}  # fmt: skip
        load = await read_engine_window(spec, self.namespace, pods, live, memo.scrape)
        memo.next_online = now + spec.online.interval_seconds  # only once the load was read
        topology = spec.placement_topology()
        served = self._served(current).placement
        observed = views.balancedness(load, served, topology.num_ranks)
        self.r._report_balancedness(observed, "observed")
        online = spec.online
        options = PlanOptions(online.mode, online.max_moves, online.slack_permille / 1000,
                              online.similarity_threshold_permille / 1000,
                              online.min_gain_permille / 1000)  # fmt: skip
        reference = current.load if current is not None else None
        planned = await asyncio.to_thread(plan, load, topology, served, reference, options)
        fields: dict[str, Any] = {"balancedness": round(float(observed.mean()), 4)}
        if triggered:
            fields["observedRebalanceId"] = trigger
        await self.r._write({}, **fields)
        if not any(layer.updated for layer in planned.layers):
            return None
        predicted = torch.tensor([1.0 / layer.imbalance_after for layer in planned.layers])
        self.r._report_balancedness(predicted, "predicted")
        return await self.r._create_revision(
            self.obj, revisions, planned.placement, load, "online",
            round(float(predicted.mean()), 4), planned.moves, None,
        )  # fmt: skip

    def _within_min_interval(self) -> bool:
        last = (self.status.get("lastRebalance") or {}).get("time")
        return (
            last is not None and time.time() - _unix(last) < self.spec.rollout.min_interval_seconds
        )

    # -- acting --------------------------------------------------------------------------
    async def _ensure_file(
        self, number: int, placement: torch.Tensor, load: torch.Tensor | None
    ) -> None:
        """The ConfigMap of revision ``number`` holds its start-up file (made, or remade when
        the spec changed what the file says)."""
        text = startup_file(self.spec, placement, load)
        name = config_map_name(self.name, number)
        found = await restart_kube.read_config_map(self.namespace, name)
        if found == {FILE_KEYS[self.spec.engine]: text}:
            return
        if found is not None:
            await restart_kube.delete_config_map(self.namespace, name)
        body = config_map_body(self.obj, number, self.spec.engine, text)
        await restart_kube.create_config_map(self.namespace, body)

    async def _act(
        self, target: Target, groups: list[GroupView], shared: dict[str, Any] | None
    ) -> float:
        # A LeaderWorkerSet's partition admits its groups from the highest index down.
        order = (
            sorted((g.name for g in groups), key=lambda n: -lws_group_index(n, self.ref.name))
            if self.shared
            else None
        )
        decision = next_restart(groups, target.number, order)
        previous = {g["name"]: g for g in self.status.get("groups") or []}
        group_status = [self._group_status(group, previous.get(group.name)) for group in groups]
        for group, entry in zip(groups, group_status, strict=True):
            if entry.get("restarting") and group.serves(target.number):
                del entry["restarting"]
                self.r.emit("Normal", "GroupRestarted", f"{target.name}: group {group.name} is "
                            f"back, {group.size} pods ready")  # fmt: skip
        if decision.step == Step.DONE:
            if shared is not None and lws_partition(shared):
                # Every group serves the target: the partition this rollout held goes back
                # to 0, where a LeaderWorkerSet at rest has it.
                await restart_kube.set_lws_partition(self.namespace, self.ref.name, 0)
            return await self._done(target, group_status)
        if decision.step == Step.WAIT:
            restarted = (previous.get(decision.group or "") or {}).get("restartedAt")
            deadline = self.spec.rollout.progress_deadline_seconds
            if overdue(_unix(restarted) if restarted else None, time.time(), deadline):
                return await self._abort(target, decision.group or "", group_status)
        if target.cause != Cause.RESYNC and self.status.get("targetRevision") != target.name:
            METRICS.in_progress.labels(**self.r.labels).set(1)
            METRICS.started.labels(**self.r.labels).set(time.time())
            self.r.emit("Normal", "RolloutStarted",
                        messages.rollout_started(target.name, target.cause.shown))  # fmt: skip
        if decision.step == Step.RESTART:
            assert decision.group is not None
            await self._restart(target, decision.group, group_status)
        # A resync is found again from the workloads on every pass: no target to remember.
        await self.r._write(
            {"Progressing": (ConditionStatus.TRUE, "RolloutInProgress",
                             f"{target.name} ({target.cause.shown}): {decision.reason}")},
            targetRevision=None if target.cause == Cause.RESYNC else target.name,
            phase="Rolling", groups=group_status,
        )  # fmt: skip
        return POLL_SECONDS

    async def _restart(
        self, target: Target, group: str, group_status: list[dict[str, Any]]
    ) -> None:
        workload = self.ref.name_of(group)
        await restart_kube.stamp_workload(
            self.namespace, self.ref.kind, workload, target.number,
            config_map_name(self.name, target.number),
            partition=lws_group_index(group, workload) if self.shared else None,
        )  # fmt: skip
        self.r.emit(
            "Normal", "GroupRestarting", f"{target.name}: restarting group {group} "
            f"({self.ref.kind} {workload}"
            + (f", partition {lws_group_index(group, workload)})" if self.shared else ")")
        )  # fmt: skip
        for entry in group_status:
            if entry["name"] == group:
                entry["restartedAt"], entry["restarting"] = now_rfc3339(), target.name

    async def _abort(self, target: Target, group: str, group_status: list[dict[str, Any]]) -> float:
        """The group is not back within the deadline: give up the target.  Until
        ``RETRY_AFTER_ABORT_SECONDS`` have passed, passes bring groups stamped otherwise than
        the current revision back onto it, the one that is down first; then the target (an
        offline mapping, a pinned revision) is tried again."""
        message = (f"group {group} not ready {self.spec.rollout.progress_deadline_seconds} s "
                   "after its restart")  # fmt: skip
        METRICS.in_progress.labels(**self.r.labels).set(0)
        METRICS.rollouts.labels(**self.r.labels, result=RolloutResult.ABORTED.value).inc()
        METRICS.errors.labels(**self.r.labels, reason="GroupNotReady").inc()
        self.r.emit("Warning", "RolloutAborted",
                    messages.rollout_aborted(target.name, "GroupNotReady", message))  # fmt: skip
        self.r.memo.next_online = time.monotonic() + self._interval()
        self.r.memo.retry_after = time.monotonic() + RETRY_AFTER_ABORT_SECONDS
        await self.r._write(
            {"Degraded": (ConditionStatus.TRUE, "GroupNotReady", message),
             "Progressing": (ConditionStatus.FALSE, "RolloutAborted", f"{target.name} aborted"),
             "Ready": (ConditionStatus.FALSE, "GroupNotReady", message)},
            targetRevision=None, phase="Degraded", groups=group_status,
        )  # fmt: skip
        return POLL_SECONDS

    async def _done(self, target: Target, group_status: list[dict[str, Any]]) -> float:
        fields: dict[str, Any] = {"groups": group_status, "targetRevision": None}
        if target.revision is not None:
            fields["currentRevision"] = target.name
        if target.cause != Cause.RESYNC:
            METRICS.in_progress.labels(**self.r.labels).set(0)
            rolled_back = target.revision is not None and target.revision.source == "rollback"
            result = RolloutResult.ROLLED_BACK if rolled_back else RolloutResult.COMPLETED
            METRICS.rollouts.labels(**self.r.labels, result=result.value).inc()
            seconds = self._rollout_seconds(group_status)
            METRICS.rollout_duration.labels(**self.r.labels).observe(seconds)
            moves = target.revision.moves if target.revision else 0
            reason = "RolledBack" if rolled_back else "RolloutComplete"
            self.r.emit("Normal", reason, messages.rollout_complete(
                target.name, self.spec.model.layers, moves, seconds))  # fmt: skip
            fields["lastRebalance"] = {
                "time": now_rfc3339(),
                "predictedBalancedness": target.revision.predicted_balancedness
                if target.revision else None,
                "moves": moves,
                "layersUpdated": self.spec.model.layers,
            }  # fmt: skip
            fields["layersCommitted"] = fields["layersTotal"] = self.spec.model.layers
        await self.r._ready(
            ("RolloutComplete", f"every group serves {target.name}"),
            ("RolloutComplete", f"{target.name} is in service"),
            **fields,
        )
        if target.revision is not None:
            await self._prune(target.revision)
        return self.r._next_delay(self.spec)

    async def _prune(self, current: Revision) -> None:
        """Old revisions beyond the history limit go, and their ConfigMaps with them."""
        before = {parse_revision(r).number
                  for r in await kube.list_revisions(self.namespace, self.name)}  # fmt: skip
        await self.r._prune(self.spec, current)
        after = {parse_revision(r).number
                 for r in await kube.list_revisions(self.namespace, self.name)}  # fmt: skip
        for number in sorted(before - after):
            await restart_kube.delete_config_map(self.namespace, config_map_name(self.name, number))

    # -- reporting -----------------------------------------------------------------------
    def _group_status(self, group: GroupView, before: dict[str, Any] | None) -> dict[str, Any]:
        serving = group.serving
        entry: dict[str, Any] = {
            "name": group.name,
            "revision": revision_name(self.name, serving) if serving is not None and group.ready
            else None,
            "pods": len(group.live),
            "readyPods": group.ready_pods,
        }  # fmt: skip
        for kept in ("restartedAt", "restarting"):
            if before and before.get(kept):
                entry[kept] = before[kept]
        return entry

    async def _idle(self, groups: list[GroupView]) -> float:
        group_status = [self._group_status(g, None) for g in groups]
        down = [g.name for g in groups if not g.ready]
        served = self.status.get("currentRevision") or "the start-up placement"
        await self.r._ready(
            ("AsExpected", f"every group serves {served}"
             + (f" (groups {down} are not ready)" if down else "")),
            ("Idle", "nothing to roll out"),
            groups=group_status,
        )  # fmt: skip
        return self.r._next_delay(self.spec)

    def _rollout_seconds(self, group_status: list[dict[str, Any]]) -> float:
        stamps = [_unix(g["restartedAt"]) for g in group_status if g.get("restartedAt")]
        return max(0.0, time.time() - min(stamps)) if stamps else 0.0

    def _interval(self) -> float:
        return float(self.spec.online.interval_seconds) if self.spec.online else 0.0


def _unix(stamp: str) -> float:
    """Unix time of an RFC 3339 ``...Z`` stamp."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
