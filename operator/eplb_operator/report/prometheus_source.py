"""A recording from a real cluster: rank loads from Prometheus, rollouts from the API.

- Load: one range query, ``sum by (pod, layer, slot) (increase(eplb_expert_tokens_total{…}
  [step]))`` over the ExpertPlacement's pods, each series put at the rank that owns its slot
  (a series without a slot, from a load source, at its pod's first rank: the pod's index as
  ``spec.pods.rankFrom`` says, times ``ranksPerPod``); the pods of several EP groups add
  up, as they share one placement.  A time at which some
  rank or layer has no series is left out, never counted as zero.
- Rollouts: the placement's ControllerRevisions (moves) and its rollout Events (times,
  results, layers).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from kubernetes_asyncio import client
from prometheus_api_client import PrometheusConnect

from eplb_core.errors import InvalidInputError
from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller import kube, messages
from eplb_operator.controller.loads import pod_regex
from eplb_operator.controller.pods import pod_identity
from eplb_operator.report.recording import LoadSample, Recording, RolloutRecord
from eplb_sidecar import metric_names

RANK_LOAD_QUERY = (
    "sum by (pod, layer, slot) (increase(" + metric_names.EXPERT_TOKENS.name
    + '{{namespace="{namespace}",pod=~"{pods}"}}[{step}s]))'
)  # fmt: skip


def samples_from_matrix(
    result: list[dict[str, Any]],
    rank_of: dict[str, int],
    layers: int,
    ranks: int,
    step: float,
    slots_per_rank: int | None = None,
) -> list[LoadSample]:
    """Pure: a range query's ``(pod, layer[, slot])`` series → one sample ``[L][R]`` per time
    at which every (layer, rank) has a value.  ``rank_of``: pod → its (first) rank; with
    ``slots_per_rank``, a series with a ``slot`` label counts for the rank owning the slot
    (a pod of several ranks)."""
    by_time: dict[float, dict[tuple[int, int], float]] = {}
    for series in result:
        labels = series.get("metric") or {}
        pod, layer = labels.get("pod"), labels.get("layer")
        if pod not in rank_of or layer is None or not str(layer).isdigit():
            continue
        if int(layer) >= layers:
            raise InvalidInputError(
                f"Prometheus has layer {layer} for pod {pod}; the ExpertPlacement has {layers}"
            )
        slot = str(labels.get("slot", ""))
        rank = rank_of[str(pod)]
        if slots_per_rank is not None and slot.isdigit():
            rank = int(slot) // slots_per_rank
        for stamp, value in series.get("values") or []:
            cell = by_time.setdefault(float(stamp), {})
            key = (int(layer), rank)
            cell[key] = cell.get(key, 0.0) + float(value)
    samples = []
    for stamp in sorted(by_time):
        cells = by_time[stamp]
        if len(cells) < layers * ranks:
            continue
        grid = [[cells[(layer, rank)] for rank in range(ranks)] for layer in range(layers)]
        samples.append(LoadSample(time=stamp, seconds=step, rank_load=grid))
    return samples


def rollouts_from_objects(
    revisions: list[dict[str, Any]], events: list[dict[str, Any]], status: dict[str, Any]
) -> list[RolloutRecord]:
    """Pure: one record per rollout attempt, from revisions and the placement's Events."""
    moves = {r["metadata"]["name"]: int((r.get("data") or {}).get("moves", 0)) for r in revisions}
    records: list[RolloutRecord] = []
    ordered = sorted(events, key=lambda e: messages.event_time(e) or 0.0)
    for event in ordered:
        reason, message = event.get("reason", ""), event.get("message", "")
        when = messages.event_time(event)
        revision = messages.revision_of(message)
        open_ = next((r for r in reversed(records)
                      if r.revision == revision and r.result == "in-progress"), None)  # fmt: skip
        if reason == "RolloutStarted":
            records.append(RolloutRecord(revision=revision, started=when,
                                         moves=moves.get(revision, 0)))  # fmt: skip
        elif reason in ("RolloutComplete", "RolledBack"):
            record = open_ or RolloutRecord(revision=revision, started=when)
            if open_ is None:
                records.append(record)
            figures = messages.parse_rollout_complete(message)
            record.result, record.finished = "completed", when
            if figures is not None:
                record.layers, record.moves = figures.layers, figures.moves
        elif reason == "RolloutAborted" and open_ is not None:
            open_.result, open_.finished = "aborted", when
            open_.reason = messages.aborted_reason(message)
    target = status.get("targetRevision")
    for record in records:  # an attempt neither finished nor still running was cut short
        if record.result == "in-progress" and record.revision != target:
            record.result, record.reason = "aborted", "Interrupted"
    return records


async def _read_cluster(
    namespace: str, name: str
) -> tuple[ExpertPlacementSpec, dict[str, Any], dict[str, int], list[Any], list[Any]]:
    obj = await kube.get_placement(namespace, name)
    if obj is None:
        raise InvalidInputError(f"ExpertPlacement {namespace}/{name} not found")
    spec = ExpertPlacementSpec.model_validate(obj["spec"])
    pods = await kube.list_pods(namespace, spec.selector.to_query())
    rank_of = {}
    problems = []
    for pod in pods:
        identity = pod_identity(pod, spec.pods)
        if isinstance(identity, str):
            problems.append(identity)
        else:
            rank_of[pod["metadata"]["name"]] = identity[1] * spec.pods.ranks_per_pod
    if not rank_of:
        found = "; ".join(problems[:3]) or "no pods match the selector"
        raise InvalidInputError(f"no pods of {namespace}/{name} have a rank ({found})")
    revisions = await kube.list_revisions(namespace, name)
    async with await kube.api_client() as api:
        listed = await client.CoreV1Api(api).list_namespaced_event(namespace)
        events = [
            dict(api.sanitize_for_serialization(e))
            for e in listed.items
            if e.involved_object is not None and e.involved_object.name == name
            and e.involved_object.kind in ("ExpertPlacement", None)
        ]  # fmt: skip
    return spec, dict(obj.get("status") or {}), rank_of, revisions, events


def recording_from_cluster(
    prometheus_url: str,
    namespace: str,
    name: str,
    since_seconds: float,
    step_seconds: float,
    timeout: float = 30.0,
) -> Recording:
    """The last ``since_seconds`` of ``namespace/name``, one sample every ``step_seconds``."""
    spec, status, rank_of, revisions, events = asyncio.run(_read_cluster(namespace, name))
    topology = spec.placement_topology()
    prometheus = PrometheusConnect(url=prometheus_url, disable_ssl=True, timeout=timeout)
    end = datetime.now().astimezone()
    start = datetime.fromtimestamp(end.timestamp() - since_seconds).astimezone()
    query = RANK_LOAD_QUERY.format(namespace=namespace, pods=pod_regex(list(rank_of)),
                                   step=int(step_seconds))  # fmt: skip
    try:
        result = prometheus.custom_query_range(query, start, end, f"{step_seconds:g}s")
    except Exception as error:  # requests and the client raise their own hierarchies
        raise InvalidInputError(
            f"Prometheus at {prometheus_url} failed: {type(error).__name__}: {error}"
        ) from error
    samples = samples_from_matrix(result, rank_of, spec.model.layers, topology.num_ranks,
                                  step_seconds, topology.slots_per_rank)  # fmt: skip
    if not samples:
        raise InvalidInputError(
            f"Prometheus at {prometheus_url} has no complete {metric_names.EXPERT_TOKENS.name} "
            f"series for {namespace}/{name} in the last {since_seconds:g} s"
        )
    return Recording(
        title=f"{namespace}/{name}" + (f" ({spec.model.name})" if spec.model.name else ""),
        layers=spec.model.layers,
        ranks=topology.num_ranks,
        samples=samples,
        rollouts=rollouts_from_objects(revisions, events, status),
    )
