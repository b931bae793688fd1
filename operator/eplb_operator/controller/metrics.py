"""The operator's Prometheus metrics, named from the one table (eplb_sidecar.metric_names)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from eplb_sidecar import metric_names as names

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _counter_name(name: str) -> str:
    return name.removesuffix("_total")


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.balancedness = Gauge(
            names.PLACEMENT_BALANCEDNESS.name, names.PLACEMENT_BALANCEDNESS.help,
            list(names.PLACEMENT_BALANCEDNESS.labels), registry=r,
        )  # fmt: skip
        self.layer_balancedness = Gauge(
            names.PLACEMENT_LAYER_BALANCEDNESS.name, names.PLACEMENT_LAYER_BALANCEDNESS.help,
            list(names.PLACEMENT_LAYER_BALANCEDNESS.labels), registry=r,
        )  # fmt: skip
        self.moves = Counter(
            _counter_name(names.PLACEMENT_MOVES.name), names.PLACEMENT_MOVES.help,
            list(names.PLACEMENT_MOVES.labels), registry=r,
        )  # fmt: skip
        self.rollouts = Counter(
            _counter_name(names.ROLLOUTS.name), names.ROLLOUTS.help,
            list(names.ROLLOUTS.labels), registry=r,
        )  # fmt: skip
        self.in_progress = Gauge(
            names.ROLLOUT_IN_PROGRESS.name, names.ROLLOUT_IN_PROGRESS.help,
            list(names.ROLLOUT_IN_PROGRESS.labels), registry=r,
        )  # fmt: skip
        self.started = Gauge(
            names.ROLLOUT_STARTED.name, names.ROLLOUT_STARTED.help,
            list(names.ROLLOUT_STARTED.labels), registry=r,
        )  # fmt: skip
        self.rollout_duration = Histogram(
            names.ROLLOUT_DURATION.name, names.ROLLOUT_DURATION.help,
            list(names.ROLLOUT_DURATION.labels), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.barrier_duration = Histogram(
            names.BARRIER_DURATION.name, names.BARRIER_DURATION.help,
            list(names.BARRIER_DURATION.labels), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            _counter_name(names.RECONCILE_ERRORS.name), names.RECONCILE_ERRORS.help,
            list(names.RECONCILE_ERRORS.labels), registry=r,
        )  # fmt: skip

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, address, registry=self.registry)


METRICS = OperatorMetrics()
