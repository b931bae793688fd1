"""Pods and workloads as a Restart rollout sees them: pure reads of API objects, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.restart_decide import REVISION_ANNOTATION, PodView
from eplb_operator.controller.restart_files import VOLUME


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
    """The selector's pods by EP group (its ``groupLabel``), and what is wrong with them.

    ``known``: the groups of an earlier pass (``status.groups``).  Each stays a group while
    it has no pod at all (its workload deleted them to restart them, and cannot make them
    again yet): else a group entirely down would go unseen, and another restarted."""
    groups: dict[str, list[dict[str, Any]]] = {group: [] for group in known}
    problems = []
    label = spec.pods.group_label
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        group = (pod["metadata"].get("labels") or {}).get(label)
        if group is None:
            problems.append(f"pod {pod['metadata']['name']} has no {label} label")
            continue
        groups.setdefault(group, []).append(pod)
    if not groups:
        problems.append("no pods match the selector")
    return groups, problems


def workload_problem(workload: dict[str, Any], kind: str) -> str | None:
    """Why a Restart rollout cannot roll ``workload`` (a StatefulSet or Deployment)."""
    name = f"{kind} {workload['metadata']['name']}"
    spec = workload.get("spec") or {}
    volumes = ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []
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
    return None


def stamped_revision(workload: dict[str, Any]) -> int:
    """The revision the workload's pod template is stamped with (0: not yet)."""
    template = (workload.get("spec") or {}).get("template") or {}
    return revision_of((template.get("metadata") or {}).get("annotations")) or 0
