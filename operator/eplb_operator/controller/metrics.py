"""The operator's Prometheus metrics, named from the one table (eplb_sidecar.metric_names)."""

from __future__ import annotations

from enum import Enum

from prometheus_client import CollectorRegistry, start_http_server

from eplb_sidecar import metric_names as names

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RolloutResult(str, Enum):
    """How a rollout ended: the ``result`` label of the rollouts counter."""

    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.balancedness = names.instrument(names.PLACEMENT_BALANCEDNESS, r)
        self.layer_balancedness = names.instrument(names.PLACEMENT_LAYER_BALANCEDNESS, r)
        self.moves = names.instrument(names.PLACEMENT_MOVES, r)
        self.rollouts = names.instrument(names.ROLLOUTS, r)
        self.in_progress = names.instrument(names.ROLLOUT_IN_PROGRESS, r)
        self.started = names.instrument(names.ROLLOUT_STARTED, r)
        self.rollout_duration = names.instrument(names.ROLLOUT_DURATION, r, DURATION_BUCKETS)
        self.barrier_duration = names.instrument(names.BARRIER_DURATION, r, DURATION_BUCKETS)
        self.errors = names.instrument(names.RECONCILE_ERRORS, r)
        self.leader = names.instrument(names.OPERATOR_LEADER, r)
        self._served = False

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics on ``port`` (once per process: a second call does nothing)."""
        if not self._served:
            start_http_server(port, address, registry=self.registry)
            self._served = True


METRICS = OperatorMetrics()
