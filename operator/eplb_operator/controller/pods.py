"""Do the live pods match the spec?  Pure checks on pod objects, no I/O.

Each serving replica (EP group) must have exactly one pod per index ``0 … ranks/ranksPerPod
- 1``; pod ``i`` hosts the EP ranks ``[i*ranksPerPod, (i+1)*ranksPerPod)``.  Where a pod's
group and index come from is ``spec.pods.rankFrom`` (see :func:`pod_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eplb_operator.api.v1alpha1 import (
    LWS_GROUP_INDEX_LABEL,
    LWS_NAME_LABEL,
    LWS_WORKER_INDEX_LABEL,
    POD_INDEX_LABEL,
    ExpertPlacementSpec,
    PodsSpec,
)


@dataclass
class PodCheck:
    """Pods by group and index (``groups[group][index] = pod name``) and what is wrong."""

    groups: dict[str, dict[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


def pod_identity(pod: dict[str, Any], pods: PodsSpec) -> tuple[str, int] | str:
    """``(group, index)`` of ``pod`` as ``pods.rankFrom`` says, or why it has none."""
    meta = pod["metadata"]
    name = meta["name"]
    labels = meta.get("labels") or {}
    if pods.rank_from == "StatefulSetOrdinal":
        owner = next(
            (o for o in meta.get("ownerReferences") or []
             if o.get("kind") == "StatefulSet" and o.get("controller")),
            None,
        )  # fmt: skip
        if owner is None:
            return f"pod {name} is not controlled by a StatefulSet (rankFrom StatefulSetOrdinal)"
        group, index_label = str(owner["name"]), POD_INDEX_LABEL
    elif pods.rank_from == "LeaderWorkerSet":
        lws, group_index = labels.get(LWS_NAME_LABEL), labels.get(LWS_GROUP_INDEX_LABEL)
        if lws is None or group_index is None:
            return (
                f"pod {name} has no {LWS_NAME_LABEL} and {LWS_GROUP_INDEX_LABEL} labels "
                f"(rankFrom LeaderWorkerSet)"
            )
        group, index_label = f"{lws}-{group_index}", LWS_WORKER_INDEX_LABEL
    else:
        label_group = labels.get(pods.group_label)
        if label_group is None:
            return f"pod {name} has no {pods.group_label} label"
        group, index_label = label_group, pods.rank_label
    raw = labels.get(index_label)
    if raw is None or not raw.isascii() or not raw.isdigit():
        return f"pod {name} has no integer {index_label} label"
    return group, int(raw)


def check_pods(pods: list[dict[str, Any]], spec: ExpertPlacementSpec) -> PodCheck:
    """Group ``pods`` by EP group and index and list every way they disagree with ``spec``."""
    check = PodCheck()
    per_pod = spec.pods.ranks_per_pod
    count = spec.topology.ranks // per_pod
    # With one rank per pod a pod's index is its rank: say so, as users label it.
    unit, units = ("rank", "ranks") if per_pod == 1 else ("pod index", "pods")
    if not pods:
        check.problems.append("no pods match the selector")
        return check
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        identity = pod_identity(pod, spec.pods)
        if isinstance(identity, str):
            check.problems.append(identity)
            continue
        group, index = identity
        if index >= count:
            hosted = "" if per_pod == 1 else f" ({count} pods of {per_pod} ranks each)"
            check.problems.append(f"pod {name} has {unit} {index}, outside 0..{count - 1}{hosted}")
            continue
        members = check.groups.setdefault(group, {})
        if index in members:
            check.problems.append(
                f"group {group}: pods {members[index]} and {name} both claim {unit} {index}"
            )
            continue
        members[index] = name
    for group, members in sorted(check.groups.items()):
        missing = [i for i in range(count) if i not in members]
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (" …" if len(missing) > 8 else "")
            check.problems.append(
                f"group {group} has {len(members)} of {count} {units} (missing {unit} {shown})"
            )
    return check
