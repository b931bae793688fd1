"""What the demo learns from the operator, as a user would: the ExpertPlacement's status,
its Events, and the operator's /metrics (barrier timings).  Rollouts are tracked here.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from eplb_local.demo.options import NAME, NAMESPACE
from eplb_local.kube.api import Api
from eplb_operator.controller import messages
from eplb_operator.report.recording import RolloutRecord
from eplb_sidecar import metric_names

XPL_PATH = f"/apis/eplb.io/v1alpha1/namespaces/{NAMESPACE}/expertplacements/{NAME}"
EVENTS_PATH = f"/api/v1/namespaces/{NAMESPACE}/events"


@dataclass
class Counters:
    """Monotonic sums across operator restarts (a restarted process starts again at 0)."""

    last: dict[str, float] = field(default_factory=dict)

    def delta(self, key: str, value: float) -> float:
        previous = self.last.get(key, 0.0)
        self.last[key] = value
        return value if value < previous else value - previous


def event_time(event: dict[str, Any]) -> float:
    """When an Event happened; now, for one that says nothing."""
    return messages.event_time(event) or time.time()


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


class OperatorWatch:
    def __init__(self, api: Api, metrics_url: Callable[[], str]) -> None:
        self.api = api
        self.metrics_url = metrics_url  # the operator's pod: its address changes on restart
        self.status: dict[str, Any] = {}
        self.rollouts: list[RolloutRecord] = []
        self._seen_events: set[str] = set()
        self._counters = Counters()

    # -- one poll --------------------------------------------------------------------------
    def poll(self) -> list[str]:
        """Read status, Events and metrics; returns new Events as log lines."""
        reply = self.api.get(XPL_PATH)
        self.status = dict(reply.body.get("status") or {}) if reply.code == 200 else {}
        lines = self._events()
        self._track_status()
        self._barriers()
        return lines

    @property
    def current(self) -> RolloutRecord | None:
        """The rollout in progress, if any."""
        last = self.rollouts[-1] if self.rollouts else None
        return last if last is not None and last.result == "in-progress" else None

    def completed(self) -> list[RolloutRecord]:
        return [r for r in self.rollouts if r.result == "completed"]

    def aborted(self) -> list[RolloutRecord]:
        return [r for r in self.rollouts if r.result == "aborted"]

    def _record(self, revision: str, started: float | None) -> RolloutRecord:
        current = self.current
        if current is not None and current.revision == revision:
            return current
        record = RolloutRecord(revision=revision, started=started)
        self.rollouts.append(record)
        return record

    def _events(self) -> list[str]:
        reply = self.api.get(EVENTS_PATH)
        if reply.code != 200:
            return []
        lines = []
        fresh = [e for e in reply.body.get("items", [])
                 if e["metadata"]["name"] not in self._seen_events]  # fmt: skip
        for event in sorted(fresh, key=event_time):
            self._seen_events.add(event["metadata"]["name"])
            if (event.get("involvedObject") or {}).get("name") != NAME:
                continue
            reason, message = event.get("reason", ""), event.get("message", "")
            lines.append(f"{event.get('type', 'Normal')} {reason}: {message}")
            revision = messages.revision_of(message)
            if reason == "RolloutStarted":
                self._record(revision, event_time(event))
            elif reason == "RolloutAborted" and self.current is not None:
                self._finish(self.current, "aborted", event_time(event))
        return lines

    def _track_status(self) -> None:
        status, now = self.status, time.time()
        target, current = status.get("targetRevision"), status.get("currentRevision")
        record = self.current
        if target and (record is None or record.revision != target):
            record = self._record(target, now)
        if record is None and current and not any(r.revision == current for r in self.rollouts):
            record = self._record(current, now)  # started and finished between two polls
        if record is None:
            return
        if record.revision == current and target != record.revision:
            last = status.get("lastRebalance") or {}
            record.moves = int(last.get("moves") or 0)
            record.layers = int(last.get("layersUpdated") or status.get("layersCommitted") or 0)
            self._finish(record, "completed", now)
        elif target is None and record.revision != current:
            self._finish(record, "aborted", now)
        else:
            record.layers = int(status.get("layersCommitted") or 0)

    def _finish(self, record: RolloutRecord, result: str, when: float) -> None:
        record.result = result  # type: ignore[assignment]
        record.finished = when
        if result == "aborted":
            degraded = condition(self.status, "Degraded")
            record.reason = degraded.get("reason") if degraded.get("status") == "True" else (
                record.reason or "RolloutAborted")  # fmt: skip

    def _barriers(self) -> None:
        try:
            with urllib.request.urlopen(self.metrics_url(), timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return  # the operator is restarting
        # The last batch's timings are observed just before the status says "complete": they
        # belong to the newest rollout, finished or not (none runs between rollouts).
        record = self.rollouts[-1] if self.rollouts else None
        for family in text_string_to_metric_families(text):
            if family.name != metric_names.BARRIER_DURATION.name:
                continue
            for sample in family.samples:
                phase = sample.labels.get("phase", "")
                if sample.labels.get("placement") != NAME or not sample.name.endswith(
                    ("_sum", "_count")
                ):
                    continue
                delta = self._counters.delta(f"{sample.name}/{phase}", sample.value)
                if record is None or delta <= 0:
                    continue
                if sample.name.endswith("_count") and phase == "prepare":
                    record.batches += int(delta)
                elif sample.name.endswith("_sum"):
                    if phase == "prepare":
                        record.prepare_seconds += delta
                    else:
                        record.commit_seconds += delta
