"""Do the live pods match the spec?  Pure checks on pod objects, no I/O.

Each serving replica (EP group) must have exactly one pod per rank ``0 … ranks-1``; a pod
names its group and rank with the labels ``spec.pods.groupLabel`` / ``rankLabel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec


@dataclass
class PodCheck:
    """Pods by group and rank (``groups[group][rank] = pod name``) and what is wrong."""

    groups: dict[str, dict[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


def check_pods(pods: list[dict[str, Any]], spec: ExpertPlacementSpec) -> PodCheck:
    """Group ``pods`` by EP group and rank and list every way they disagree with ``spec``."""
    check = PodCheck()
    ranks = spec.topology.ranks
    group_label, rank_label = spec.pods.group_label, spec.pods.rank_label
    if not pods:
        check.problems.append("no pods match the selector")
        return check
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        labels = pod["metadata"].get("labels") or {}
        group = labels.get(group_label)
        raw_rank = labels.get(rank_label)
        if group is None:
            check.problems.append(f"pod {name} has no {group_label} label")
            continue
        if raw_rank is None or not raw_rank.isdigit():
            check.problems.append(f"pod {name} has no integer {rank_label} label")
            continue
        rank = int(raw_rank)
        if rank >= ranks:
            check.problems.append(f"pod {name} has rank {rank}, outside 0..{ranks - 1}")
            continue
        members = check.groups.setdefault(group, {})
        if rank in members:
            check.problems.append(
                f"group {group}: pods {members[rank]} and {name} both claim rank {rank}"
            )
            continue
        members[rank] = name
    for group, members in sorted(check.groups.items()):
        missing = [r for r in range(ranks) if r not in members]
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (" …" if len(missing) > 8 else "")
            check.problems.append(
                f"group {group} has {len(members)} of {ranks} ranks (missing rank {shown})"
            )
    return check
