"""Status conditions the Kubernetes way (kstatus-compatible): Ready, Progressing, Degraded.

A condition's ``lastTransitionTime`` changes only when its status does; every write
records the ``observedGeneration`` it was computed for.
"""

from __future__ import annotations

import datetime
from enum import Enum
from typing import Any


class ConditionStatus(str, Enum):
    """A condition's status, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """``conditions`` with ``kind`` set (a new list; order kept, new kinds appended)."""
    result = [dict(c) for c in conditions or []]
    existing = next((c for c in result if c.get("type") == kind), None)
    transition = now or now_rfc3339()
    if existing is not None and existing.get("status") == status.value:
        transition = existing.get("lastTransitionTime", transition)
    updated = {
        "type": kind,
        "status": status.value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": observed_generation,
    }
    if existing is None:
        result.append(updated)
    else:
        result[result.index(existing)] = updated
    return result


def condition(conditions: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)
