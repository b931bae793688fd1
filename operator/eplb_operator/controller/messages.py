"""The operator's rollout Event messages: written by the reconciler, read back by reports.

Each names the revision first (``<placement>-<n>``), so ``kubectl get events`` sorts and
greps well; the completion message carries the figures a report draws.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_COMPLETE = re.compile(
    r"^(?P<revision>\S+): (?P<layers>\d+) layers, (?P<moves>\d+) slots moved in "
    r"(?P<seconds>[\d.]+) s$"
)


@dataclass(frozen=True)
class RolloutFigures:
    revision: str
    layers: int
    moves: int
    seconds: float


def rollout_started(revision: str, cause: str) -> str:
    return f"{revision} ({cause})"


def rollout_complete(revision: str, layers: int, moves: int, seconds: float) -> str:
    return f"{revision}: {layers} layers, {moves} slots moved in {seconds:.1f} s"


def rollout_aborted(revision: str, reason: str, message: str) -> str:
    return f"{revision}: {reason}: {message}"


def aborted_reason(message: str) -> str:
    """The CamelCase reason of a RolloutAborted message."""
    parts = message.split(": ", 2)
    return parts[1] if len(parts) > 2 else "RolloutAborted"


def event_time(event: dict[str, Any]) -> float | None:
    """Unix time of an Event (``eventTime``, else ``lastTimestamp``, else ``firstTimestamp``)."""
    for key in ("eventTime", "lastTimestamp", "firstTimestamp"):
        stamp = event.get(key)
        if stamp:
            try:
                return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def revision_of(message: str) -> str:
    """The revision a rollout Event is about (its first word)."""
    return message.split(" ", 1)[0].rstrip(":")


def parse_rollout_complete(message: str) -> RolloutFigures | None:
    match = _COMPLETE.match(message)
    if match is None:
        return None
    return RolloutFigures(
        revision=match["revision"],
        layers=int(match["layers"]),
        moves=int(match["moves"]),
        seconds=float(match["seconds"]),
    )
