"""Pods and workloads as a Restart rollout sees them: pure reads of API objects, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.pods import pod_identity
from eplb_operator.controller.restart_decide import REVISION_ANNOTATION, PodView
from eplb_operator.controller.restart_files import VOLUME

LEADER_WORKER_SET = "LeaderWorkerSet"


def revision_of(annotations: dict[str, str] | None) -> int | None:
    """The placement revision an object is stamped with; None when unstamped or garbled."""
    text = (annotations or {}).get(REVISION_ANNOTATION)
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


def pod_view(pod: dict[str, Any]) -> PodView:
    meta = pod["metadata"]
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    # An unstamped pod started from the template before any rollout: the start-up placement.
    revision = revision_of(meta.get("annotations"))
    return PodView(
        name=meta["name"],
        revision=0 if revision is None else revision,
        ready=ready,
        terminating="deletionTimestamp" in meta,
    )


def pods_by_group(
    pods: list[dict[str, Any]], spec: ExpertPlacementSpec, known: Iterable[str] = ()
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The selector's pods by EP group (its ``groupLabel``; with ``rankFrom:
    LeaderWorkerSet``, its LeaderWorkerSet group), and what is wrong with them.

    ``known``: the groups of an earlier pass (``status.groups``).  Each stays a group while
    it has no pod at all (its workload deleted them to restart them, and cannot make them
    again yet): else a group entirely down would go unseen, and another restarted."""
    groups: dict[str, list[dict[str, Any]]] = {group: [] for group in known}
    problems = []
    label = spec.pods.group_label
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if spec.pods.rank_from == LEADER_WORKER_SET:
            identity = pod_identity(pod, spec.pods)
            if isinstance(identity, str):
                problems.append(identity)
                continue
            group: str | None = identity[0]
        else:
            group = (pod["metadata"].get("labels") or {}).get(label)
        if group is None:
            problems.append(f"pod {pod['metadata']['name']} has no {label} label")
            continue
        groups.setdefault(group, []).append(pod)
    if not groups:
        problems.append("no pods match the selector")
    return groups, problems


def pod_templates(workload: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The pod templates of ``workload``: a LeaderWorkerSet's leader template (when it has
    one of its own) and worker template; the one of a StatefulSet or Deployment."""
    spec = workload.get("spec") or {}
    if kind == LEADER_WORKER_SET:
        templates = spec.get("leaderWorkerTemplate") or {}
        return [t for t in (templates.get("leaderTemplate"), templates.get("workerTemplate"))
                if t is not None]  # fmt: skip
    return [spec.get("template") or {}]


def group_size(workload: dict[str, Any], kind: str) -> int:
    """Pods in one EP group: a LeaderWorkerSet group's size, else the workload's replicas."""
    spec = workload.get("spec") or {}
    if kind == LEADER_WORKER_SET:
        return int((spec.get("leaderWorkerTemplate") or {}).get("size", 1))
    return int(spec.get("replicas", 1))


def scaled(value: int | str, total: int) -> int:
    """An int-or-percent of ``total``, rounded down (as the LWS controller scales
    ``maxUnavailable``); None-like garbage counts as ``total``."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%") and text[:-1].isdigit():
        return int(text[:-1]) * total // 100
    return int(text) if text.isdigit() else total


def workload_problem(workload: dict[str, Any], kind: str) -> str | None:
    """Why a Restart rollout cannot roll ``workload`` (a StatefulSet, Deployment or
    LeaderWorkerSet)."""
    name = f"{kind} {workload['metadata']['name']}"
    spec = workload.get("spec") or {}
    for template in pod_templates(workload, kind):
        volumes = (template.get("spec") or {}).get("volumes") or []
        volume = next((v for v in volumes if v.get("name") == VOLUME), None)
        if volume is None or "configMap" not in volume:
            return (
                f"{name}: its pod template has no configMap volume {VOLUME!r} for the engine's "
                "start-up file (the eplb-sidecar chart's eplb-sidecar.volumes adds it)"
            )
    if kind == "StatefulSet":
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            kind_of = strategy.get("type")
            return f"{name}: updateStrategy {kind_of} does not restart pods; use RollingUpdate"
        partition = (strategy.get("rollingUpdate") or {}).get("partition") or 0
        if partition:
            return f"{name}: a rollingUpdate.partition of {partition} holds pods back; unset it"
    if kind == LEADER_WORKER_SET:
        # A Restart rollout admits its groups one at a time through the partition (which it
        # owns while it runs, whatever maxUnavailable says); surge groups it cannot count.
        strategy = spec.get("rolloutStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return f"{name}: rolloutStrategy {strategy.get('type')} does not restart groups"
        rolling = strategy.get("rollingUpdateConfiguration") or {}
        surge = rolling.get("maxSurge", 0)
        if scaled(surge, int(spec.get("replicas", 1))):
            return (f"{name}: maxSurge {surge} adds groups during its rolling update that the "
                    "placement does not count; set it to 0")  # fmt: skip
    return None


def stamped_revision(workload: dict[str, Any], kind: str) -> int:
    """The revision the workload's pod template is stamped with (0: not yet); a
    LeaderWorkerSet's templates are stamped together, its worker template is read."""
    template = pod_templates(workload, kind)[-1]
    return revision_of((template.get("metadata") or {}).get("annotations")) or 0


def lws_group_index(group: str, lws: str) -> int:
    """The index of EP group ``<lws>-<index>`` in LeaderWorkerSet ``lws``."""
    return int(group[len(lws) + 1 :])


def lws_partition(workload: dict[str, Any]) -> int:
    """The LeaderWorkerSet's ``rollingUpdateConfiguration.partition`` (0 when unset)."""
    strategy = (workload.get("spec") or {}).get("rolloutStrategy") or {}
    return int((strategy.get("rollingUpdateConfiguration") or {}).get("partition") or 0)


def lws_group_stamp(workload: dict[str, Any], index: int, pods: Sequence[PodView]) -> int:
    """The revision group ``index`` of a LeaderWorkerSet is stamped with: its templates' for
    a group at or above the partition (the LWS controller rolls it onto them), else the one
    its pods started with (the lowest, while they differ; 0 with none)."""
    if index >= lws_partition(workload):
        return stamped_revision(workload, LEADER_WORKER_SET)
    revisions = [pod.revision for pod in pods if not pod.terminating and pod.revision is not None]
    return min(revisions, default=0)
