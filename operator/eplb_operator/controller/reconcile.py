"""One reconcile pass of an ExpertPlacement: observe, decide, roll out, report.

Level-triggered: every pass starts from what the API and the pods say now.
1. Pods: the selector's pods must form whole EP groups (else ``Degraded/PodsInconsistent``)
   with an address and a sidecar that answers (else ``PodsNotReady``) and serves the
   spec's shape (else ``InvalidSpec``).
2. Decide the target revision with :func:`.decide.decide` (pure; its docstring has the
   rules) and perform what it says: make a rollback revision, read the offline mapping,
   read the load window and plan; then :func:`.decide.gate` says whether to roll out.
3. Roll it out batch by batch (:mod:`.rollout`), recording progress in the status.
Conditions (Ready, Progressing, Degraded), Events and metrics say how it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch

from eplb_core.errors import InvalidInputError
from eplb_core.placements import placement_error
from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller import kube, messages
from eplb_operator.controller.conditions import ConditionStatus, now_rfc3339, set_condition
from eplb_operator.controller.decide import Action, Cause, decide, gate
from eplb_operator.controller.endpoints import PodEndpoint, endpoints
from eplb_operator.controller.loads import (
    LoadWindow,
    MetricsUnavailableError,
    PrometheusSource,
    ScrapeSource,
)
from eplb_operator.controller.metrics import METRICS, RolloutResult
from eplb_operator.controller.pods import check_pods
from eplb_operator.controller.revisions import (
    Revision,
    digest,
    parse_revision,
    revision_body,
    revision_name,
    to_prune,
)
from eplb_operator.controller.rollout import (
    BatchCommitted,
    Groups,
    Rollout,
    RolloutAbortedError,
    RolloutFinished,
    RolloutOptions,
    RolloutReport,
    pod_states,
)
from eplb_operator.controller.sessions import TransferSessions
from eplb_operator.formats.mappings import parse_placement
from eplb_operator.placement import PlanOptions, plan
from eplb_sidecar.api import AbortRequest
from eplb_sidecar.client import SidecarClient, SidecarError

RECHECK_SECONDS = float(os.environ.get("EPLB_RECHECK_SECONDS", "30"))
# After an abort, how long before the same target is tried again (a slow pod recovers).
RETRY_AFTER_ABORT_SECONDS = min(30.0, RECHECK_SECONDS * 5)
# The operator's projected ServiceAccount token for the sidecars' audience (the chart mounts
# it); re-read on every pass, since the kubelet rotates it.  No Secret: see eplb_sidecar.auth.
TOKEN_FILE = os.environ.get("EPLB_SIDECAR_TOKEN_FILE", "/var/run/secrets/eplb.io/sidecar/token")


def sidecar_token() -> str:
    """The token the operator presents to sidecars (OSError when it is missing or empty)."""
    with open(TOKEN_FILE) as handle:
        token = handle.read().strip()
    if not token:
        raise OSError(f"{TOKEN_FILE} is empty")
    return token


Emit = Callable[[str, str, str], None]  # (Normal|Warning, reason, message) → an Event
Conditions = dict[str, tuple[ConditionStatus, str, str]]


@dataclass
class PlacementMemo:
    """What the operator remembers of one placement between passes (lost on restart)."""

    scrape: ScrapeSource | None = None
    next_online: float = 0.0
    retry_after: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    degraded: tuple[str, str] | None = None  # the problem last reported with an Event
    # Set when the placement is being deleted (handlers.py): a rollout under way stops where
    # every pod agrees and aborts what it staged (rollout.Rollout's ``stop``).
    stop_reason: str | None = None
    rolling_out: bool = False  # inside Rollout.run: to be stopped by stop_reason, not cancelled
    current_pass: asyncio.Task[Any] | None = None  # the daemon's pass under way
    # The EP groups' transfer sessions, kept across rollouts while they succeed (sessions.py).
    transfer: TransferSessions = field(default_factory=TransferSessions)


class Reconciler:
    def __init__(self, namespace: str, name: str, memo: PlacementMemo, emit: Emit) -> None:
        self.namespace = namespace
        self.name = name
        self.memo = memo
        self.emit = emit
        self.labels = {"namespace": namespace, "placement": name}
        self._generation = 0
        self._served_revision = 0  # the highest revision any pod served at the last look

    # -- the pass --------------------------------------------------------------------------
    async def run(self) -> float:
        """One pass; returns the seconds until the next."""
        obj = await kube.get_placement(self.namespace, self.name)
        if obj is None:
            return RECHECK_SECONDS
        self._generation = int(obj["metadata"].get("generation") or 0)
        status = obj.get("status") or {}
        try:
            spec = ExpertPlacementSpec.model_validate(obj["spec"])
        except pydantic.ValidationError as error:
            return await self._degraded("InvalidSpec", "; ".join(e["msg"] for e in error.errors()))
        if spec.rollout.strategy == "Restart":  # engines that take placements at start-up
            from eplb_operator.controller.restart import RestartPass  # it builds on this module

            return await RestartPass(self, obj, spec, status).run()
        if spec.rollout.paused:
            await self._write(
                {"Progressing": (ConditionStatus.FALSE, "Paused", "spec.rollout.paused is set")},
                phase="Paused",
            )
            return RECHECK_SECONDS

        pods = await kube.list_pods(self.namespace, spec.selector.to_query())
        check = check_pods(pods, spec)
        if not check.consistent:
            return await self._degraded("PodsInconsistent", "; ".join(check.problems))
        found = endpoints(pods, check.groups, spec)
        if found.problems:
            return await self._degraded("PodsInconsistent", "; ".join(found.problems))
        if found.not_ready:
            return await self._degraded("PodsNotReady", f"pods {found.not_ready} have no IP yet")
        groups = found.groups
        try:
            token = sidecar_token()
        except OSError as error:
            return await self._degraded(
                "TokenUnavailable", f"the operator's sidecar token: {error}"
            )
        clients = {
            pod.name: SidecarClient(pod.control_url, token)
            for members in groups.values()
            for pod in members.values()
        }
        try:
            return await self._with_pods(obj, spec, status, groups, clients)
        finally:
            await asyncio.gather(*(client.close() for client in clients.values()))

    async def _with_pods(
        self,
        obj: dict[str, Any],
        spec: ExpertPlacementSpec,
        status: dict[str, Any],
        groups: Groups,
        clients: dict[str, SidecarClient],
    ) -> float:
        try:
            states = await pod_states(groups, clients)
        except SidecarError as error:
            return await self._degraded("PodsNotReady", str(error))
        topology = spec.placement_topology()
        for pod_name, info in states.items():
            shape = (info.layers, info.experts, info.ranks, info.slots_per_rank,
                     info.ranks_per_pod)  # fmt: skip
            wanted = (spec.model.layers, topology.num_experts, topology.num_ranks,
                      topology.slots_per_rank, spec.pods.ranks_per_pod)  # fmt: skip
            if shape != wanted:
                return await self._degraded(
                    "InvalidSpec",
                    f"pod {pod_name} serves (layers, experts, ranks, slots per rank, ranks per "
                    f"pod) {shape}; the spec says {wanted}",
                )
        served = most_common_rows(
            [torch.tensor(info.placement) for info in states.values() if info.placement]
        )
        # Revision numbers stay above what any pod serves, so that a placement deleted and
        # created again (a new incarnation, its own revisions from 1) is not refused by the
        # sidecars as older than what they hold.
        self._served_revision = max(
            (max(info.revisions, default=0) for info in states.values()), default=0
        )
        revisions = [
            parse_revision(r) for r in await kube.list_revisions(self.namespace, self.name)
        ]
        current = next((r for r in revisions if r.name == status.get("currentRevision")), None)
        checked: set[Cause] = set()
        while True:  # at most three rounds: offline and online may find nothing new
            decision = decide(
                spec, status, states, revisions, time.monotonic(), name=self.name,
                next_online=self.memo.next_online, checked=frozenset(checked),
            )  # fmt: skip
            cause, target = decision.cause, decision.target
            if cause == Cause.INVALID_PIN:
                return await self._degraded("InvalidSpec", decision.message)
            if cause == Cause.ROLLBACK:
                pinned = decision.pinned
                assert pinned is not None
                target = await self._create_revision(
                    obj, revisions, pinned.placement, pinned.load, "rollback",
                    pinned.predicted_balancedness, 0, None,
                )  # fmt: skip
            elif cause == Cause.OFFLINE:
                try:
                    target = await self._offline(obj, spec, revisions, current)
                except (InvalidInputError, KeyError, kube.ApiException) as error:
                    return await self._degraded("InvalidSpec", f"offline mapping: {error}")
            elif cause in (Cause.REBALANCE_REQUESTED, Cause.ONLINE_DUE):
                try:
                    target = await self._online(obj, spec, status, groups, served, current,
                                                revisions)  # fmt: skip
                except MetricsUnavailableError as error:
                    METRICS.errors.labels(**self.labels, reason="MetricsUnavailable").inc()
                    return await self._degraded("MetricsUnavailable", str(error), keep_ready=True)
            if target is not None or not cause.acts_first:
                break
            checked.add(cause)
        if target is None:
            await self._ready(
                ("AsExpected", "pods serve their start-up placement"),
                ("Idle", "nothing to roll out"),
            )
            return self._next_delay(spec)
        action = gate(target, cause, states, time.monotonic(), self.memo.retry_after)
        if action == Action.IN_SERVICE:
            # Every pod already serves it: nothing to move, no rollout to report.
            await self._ready(
                ("AsExpected", f"every pod serves {target.name}"),
                ("RolloutComplete", f"{target.name} is in service"),
                currentRevision=target.name,
                targetRevision=None,
            )
            return self._next_delay(spec)
        if action == Action.BACK_OFF:
            return max(0.5, self.memo.retry_after - time.monotonic())
        resumed_total = int(status.get("layersTotal") or 0) if cause == Cause.CONTINUE else 0
        return await self._roll_out(obj, spec, groups, clients, target, cause.shown,
                                    resumed_total)  # fmt: skip

    # -- deciding --------------------------------------------------------------------------
    async def _offline(
        self,
        obj: dict[str, Any],
        spec: ExpertPlacementSpec,
        revisions: list[Revision],
        current: Revision | None,
    ) -> Revision | None:
        """The ConfigMap's mapping as a revision: a new one when the mapping changed, the
        stored one again while it is not in service yet (an aborted rollout is retried)."""
        assert spec.offline is not None
        ref = spec.offline.config_map_ref
        text = await kube.read_config_map_key(self.namespace, ref.name, ref.key)
        text_digest = digest(text)
        offline = [r for r in revisions if r.source == "offline"]
        if offline and offline[-1].config_map_digest == text_digest:
            taken = offline[-1]
            in_service = current is not None and current.number >= taken.number
            return None if in_service else taken
        doc = parse_placement(text, f"ConfigMap {ref.name} key {ref.key}")
        topology = spec.placement_topology()
        # The spec's MoE layers, matched by engine layer id (spec.model.layerIds).
        phy2log = doc.rows_for(spec.model.engine_layer_ids(), "the mapping")
        error = placement_error(phy2log, topology.num_slots, topology.num_experts)
        if error is not None:
            raise InvalidInputError(error)
        return await self._create_revision(
            obj, revisions, torch.from_numpy(phy2log), None, "offline", None, 0, text_digest
        )

    async def _online(
        self,
        obj: dict[str, Any],
        spec: ExpertPlacementSpec,
        status: dict[str, Any],
        groups: Groups,
        served: torch.Tensor,
        current: Revision | None,
        revisions: list[Revision],
    ) -> Revision | None:
        """A new revision when a rebalance is due and changes some layer."""
        assert spec.online is not None
        online = spec.online
        trigger = spec.rebalance.id if spec.rebalance else None
        triggered = trigger is not None and trigger != status.get("observedRebalanceId")
        now = time.monotonic()  # decide() found the rebalance due (or requested)
        window = await self._load_window(spec, groups, online.window_seconds)
        self.memo.next_online = now + online.interval_seconds  # only once the load was read
        observed = 1.0 / window.observed_imbalance(
            [[pod.name for pod in members.values()] for members in groups.values()]
        )
        self._report_balancedness(observed, "observed")
        options = PlanOptions(
            mode=online.mode,
            max_moves=online.max_moves,
            slack=online.slack_permille / 1000,
            similarity_threshold=online.similarity_threshold_permille / 1000,
            min_gain=online.min_gain_permille / 1000,
        )
        reference = current.load if current is not None else None
        planned = await asyncio.to_thread(
            plan, window.load, spec.placement_topology(), served, reference, options
        )
        fields: dict[str, Any] = {"balancedness": round(float(observed.mean()), 4)}
        if triggered:
            fields["observedRebalanceId"] = trigger
        updated = [layer for layer in planned.layers if layer.updated]
        if not updated:
            await self._write({}, **fields)
            return None
        predicted = torch.tensor([1.0 / layer.imbalance_after for layer in planned.layers])
        self._report_balancedness(predicted, "predicted")
        await self._write({}, **fields)
        return await self._create_revision(
            obj, revisions, planned.placement, window.load, "online",
            round(float(predicted.mean()), 4), planned.moves, None,
        )  # fmt: skip

    async def _load_window(
        self, spec: ExpertPlacementSpec, groups: Groups, window_seconds: int
    ) -> LoadWindow:
        pods = [pod for members in groups.values() for pod in members.values()]
        layers, experts = spec.model.layers, spec.model.experts
        if spec.metrics.prometheus_url:
            source = PrometheusSource(
                spec.metrics.prometheus_url, spec.metrics.timeout_seconds, spec.metrics.load_query
            )
            return await source.window(
                self.namespace, [pod.name for pod in pods], window_seconds, layers, experts
            )
        if self.memo.scrape is None:
            self.memo.scrape = ScrapeSource(timeout=spec.metrics.timeout_seconds)
        urls = {pod.name: pod.metrics_url for pod in pods}
        return await self.memo.scrape.window(urls, window_seconds, layers, experts)

    async def _create_revision(
        self,
        obj: dict[str, Any],
        revisions: list[Revision],
        placement: torch.Tensor,
        load: torch.Tensor | None,
        source: str,
        predicted: float | None,
        moves: int,
        config_map_digest: str | None,
    ) -> Revision:
        number = max(max((r.number for r in revisions), default=0), self._served_revision) + 1
        revision = Revision(
            number=number,
            name=revision_name(self.name, number),
            placement=placement.to(torch.int64),
            load=load,
            source=source,  # type: ignore[arg-type]
            predicted_balancedness=predicted,
            moves=moves,
            config_map_digest=config_map_digest,
        )
        await kube.create_revision(self.namespace, revision_body(obj, revision))
        return revision

    # -- rolling out -----------------------------------------------------------------------
    async def _roll_out(
        self,
        obj: dict[str, Any],
        spec: ExpertPlacementSpec,
        groups: Groups,
        clients: dict[str, SidecarClient],
        target: Revision,
        cause: str,
        resumed_total: int,
    ) -> float:
        rollout_spec = spec.rollout
        rollout = Rollout(
            groups,
            clients,
            target.number,
            target.placement,
            RolloutOptions(
                layers_per_step=rollout_spec.layers_per_step,
                barrier_timeout=rollout_spec.barrier_timeout_seconds,
                progress_deadline=rollout_spec.progress_deadline_seconds,
            ),
            pod_alive=self._pod_alive,
            resumed_total=resumed_total,
            stop=lambda: self.memo.stop_reason,
            sessions=self.memo.transfer,
        )
        started = time.monotonic()
        progress = {} if resumed_total else {"layersCommitted": 0}  # a resumed one keeps its own
        await self._write(
            {"Progressing": (ConditionStatus.TRUE, "RolloutInProgress",
                             f"rolling out {target.name} ({cause})")},
            targetRevision=target.name, phase="Rolling", **progress,
        )  # fmt: skip
        METRICS.in_progress.labels(**self.labels).set(1)
        METRICS.started.labels(**self.labels).set(time.time())
        self.emit("Normal", "RolloutStarted", messages.rollout_started(target.name, cause))
        try:
            self.memo.rolling_out = True
            report = await self._follow(rollout)
        except RolloutAbortedError as error:
            self.memo.rolling_out = False
            METRICS.in_progress.labels(**self.labels).set(0)
            METRICS.rollouts.labels(**self.labels, result=RolloutResult.ABORTED.value).inc()
            METRICS.errors.labels(**self.labels, reason=error.reason).inc()
            self.emit(
                "Warning",
                "RolloutAborted",
                messages.rollout_aborted(target.name, error.reason, error.message),
            )
            self.memo.retry_after = time.monotonic() + RETRY_AFTER_ABORT_SECONDS
            await self._write(
                {"Degraded": (ConditionStatus.TRUE, error.reason, error.message),
                 "Progressing": (ConditionStatus.FALSE, "RolloutAborted", f"{target.name} aborted"),
                 "Ready": (ConditionStatus.FALSE, error.reason, error.message)},
                targetRevision=None, phase="Degraded",
            )  # fmt: skip
            return min(RECHECK_SECONDS, 5.0)
        finally:
            self.memo.rolling_out = False
        METRICS.in_progress.labels(**self.labels).set(0)
        if report is None:
            await self._write(
                {"Progressing": (ConditionStatus.FALSE, "Paused", f"paused during {target.name}")},
                phase="Paused",
            )
            return RECHECK_SECONDS
        return await self._finished(obj, spec, target, cause, report, time.monotonic() - started)

    async def _finished(
        self,
        obj: dict[str, Any],
        spec: ExpertPlacementSpec,
        target: Revision,
        cause: str,
        report: RolloutReport,
        seconds: float,
    ) -> float:
        result = RolloutResult.ROLLED_BACK if cause == "rollback" else RolloutResult.COMPLETED
        fields: dict[str, Any] = {
            "currentRevision": target.name,
            "targetRevision": None,
            "layersCommitted": report.layers_committed,
            "layersTotal": report.layers_total,
            "phase": "Ready",
        }
        if report.layers_total:
            METRICS.rollouts.labels(**self.labels, result=result.value).inc()
            METRICS.moves.labels(**self.labels).inc(report.moves)
            METRICS.rollout_duration.labels(**self.labels).observe(seconds)
            reason = "RolledBack" if cause == "rollback" else "RolloutComplete"
            message = messages.rollout_complete(
                target.name, report.layers_committed, report.moves, seconds
            )
            self.emit("Normal", reason, message)
            fields["lastRebalance"] = {
                "time": now_rfc3339(),
                "predictedBalancedness": target.predicted_balancedness,
                "moves": report.moves,
                "layersUpdated": report.layers_committed,
            }
        ready_message = f"every pod serves {target.name}"
        if report.dropped_pods:
            ready_message += f" (pods {report.dropped_pods} left and will be re-synced)"
        await self._ready(
            ("RolloutComplete", ready_message),
            ("RolloutComplete", f"{target.name} is in service"),
            **fields,
        )
        await self._prune(spec, target)
        return self._next_delay(spec)

    async def _follow(self, rollout: Rollout) -> RolloutReport | None:
        """Record each batch of ``rollout`` as it lands; its report, or None when
        ``spec.rollout.paused`` was set meanwhile (the rollout stops before its next batch)."""
        async with contextlib.aclosing(rollout.events()) as events:
            async for event in events:
                if isinstance(event, RolloutFinished):
                    return event.report
                if await self._batch_committed(event) and event.more:
                    return None
        raise AssertionError("a rollout's events end with RolloutFinished")

    async def _batch_committed(self, event: BatchCommitted) -> bool:
        """Record a batch's progress in the status and metrics; whether the spec (as the
        status write read it) asks the rollout to pause."""
        batch = event.batch
        METRICS.barrier_duration.labels(**self.labels, phase="prepare").observe(
            batch.prepare_seconds
        )
        METRICS.barrier_duration.labels(**self.labels, phase="commit").observe(batch.commit_seconds)
        written = await kube.update_placement_status(
            self.namespace,
            self.name,
            lambda current: {
                "layersCommitted": event.layers_committed,
                "layersTotal": event.layers_total,
            },
        )
        if written is None:
            return False
        return bool((written.get("spec") or {}).get("rollout", {}).get("paused", False))

    async def _pod_alive(self, pod: PodEndpoint) -> bool:
        found = await kube.get_pod(self.namespace, pod.name)
        return found is not None and str(found["metadata"].get("uid", "")) == pod.uid

    async def _prune(self, spec: ExpertPlacementSpec, current: Revision) -> None:
        revisions = [
            parse_revision(r) for r in await kube.list_revisions(self.namespace, self.name)
        ]
        keep = {current.name}
        if spec.pinned_revision is not None:
            keep.add(revision_name(self.name, spec.pinned_revision))
        limit = spec.rollout.revision_history_limit + 1
        for name in to_prune(revisions, keep, limit):
            await kube.delete_revision(self.namespace, name)

    # -- deletion --------------------------------------------------------------------------
    async def drop_staging(self) -> list[str]:
        """Abort whatever the selected pods have staged; the pods that had some.

        For a placement being deleted, after its own rollout (if any) has stopped: one that
        an operator which died mid-rollout left behind would otherwise stay staged, since no
        rollout of this placement comes to clean it up.  Best effort: a pod that does not
        answer is skipped (what it staged goes with its restart, or at the next rollout)."""
        obj = await kube.get_placement(self.namespace, self.name)
        if obj is None:
            return []
        try:
            spec = ExpertPlacementSpec.model_validate(obj["spec"])
        except pydantic.ValidationError:
            return []
        if spec.rollout.strategy == "Restart":
            return []  # nothing is staged in sidecars: pods restart with a start-up file
        pods = await kube.list_pods(self.namespace, spec.selector.to_query())
        found = endpoints(pods, check_pods(pods, spec).groups, spec)
        try:
            token = sidecar_token()
        except OSError:
            return []
        targets = [pod for members in found.groups.values() for pod in members.values()]

        async def drop(pod: PodEndpoint) -> bool:
            async with SidecarClient(pod.control_url, token) as client:
                try:
                    staged = (await client.info()).staged
                    for staging in staged:
                        await client.abort(AbortRequest(revision=staging.revision,
                                                        layers=staging.layers))  # fmt: skip
                except (SidecarError, OSError, TimeoutError):
                    return False
                return bool(staged)

        dropped = await asyncio.gather(*(drop(pod) for pod in targets))
        return [pod.name for pod, had in zip(targets, dropped, strict=True) if had]

    # -- reporting -------------------------------------------------------------------------
    async def degraded(self, reason: str, message: str) -> float:
        """Degraded=True for ``reason`` (from outside a pass: an API refusal)."""
        return await self._degraded(reason, message)

    async def _degraded(self, reason: str, message: str, keep_ready: bool = False) -> float:
        """Degraded=True (and Ready=False unless ``keep_ready``), with a Warning Event when
        the problem is new: a condition alone is easy to miss, one Event per pass is spam."""
        if self.memo.degraded != (reason, message):
            self.memo.degraded = (reason, message)
            self.emit("Warning", reason, message)
        conditions: Conditions = {"Degraded": (ConditionStatus.TRUE, reason, message)}
        if not keep_ready:
            conditions["Ready"] = (ConditionStatus.FALSE, reason, message)
        METRICS.errors.labels(**self.labels, reason=reason).inc()
        await self._write(conditions, phase="Degraded")
        return RECHECK_SECONDS

    async def _ready(
        self, ready: tuple[str, str], progressing: tuple[str, str], **fields: Any
    ) -> None:
        """Ready=True, Progressing=False, Degraded=False: (reason, message) of the first two."""
        self.memo.degraded = None
        await self._write(
            {
                "Ready": (ConditionStatus.TRUE, *ready),
                "Progressing": (ConditionStatus.FALSE, *progressing),
                "Degraded": (ConditionStatus.FALSE, "AsExpected", ""),
            },
            **{"phase": "Ready", **fields},
        )

    async def _write(self, conditions: Conditions, **fields: Any) -> None:
        generation = self._generation

        def change(current: dict[str, Any]) -> dict[str, Any]:
            existing = (current.get("status") or {}).get("conditions")
            for kind, (state, reason, message) in conditions.items():
                existing = set_condition(existing, kind, state, reason, message, generation)
            out: dict[str, Any] = {"observedGeneration": generation}
            if conditions:
                out["conditions"] = existing
            out.update(fields)
            return out

        await kube.update_placement_status(self.namespace, self.name, change)

    def _report_balancedness(self, per_layer: torch.Tensor, source: str) -> None:
        METRICS.balancedness.labels(**self.labels, source=source).set(float(per_layer.mean()))
        for layer, value in enumerate(per_layer.tolist()):
            METRICS.layer_balancedness.labels(**self.labels, layer=str(layer), source=source).set(
                value
            )

    def _next_delay(self, spec: ExpertPlacementSpec) -> float:
        if spec.online is None:
            return RECHECK_SECONDS
        return max(0.5, min(RECHECK_SECONDS, self.memo.next_online - time.monotonic()))


def most_common_rows(placements: list[torch.Tensor]) -> torch.Tensor:
    """``[L, P]``: per layer, the row most pods serve (what the group agrees on)."""
    rows = []
    for layer in range(placements[0].shape[0]):
        counts = Counter(tuple(p[layer].tolist()) for p in placements)
        rows.append(list(counts.most_common(1)[0][0]))
    return torch.tensor(rows, dtype=torch.int64)
