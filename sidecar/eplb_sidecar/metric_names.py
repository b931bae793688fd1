"""Every Prometheus metric the project exports: the one table names come from.

The sidecar (per pod) and the operator (per ExpertPlacement) both export from this table;
alert rules and dashboards use these names.  Prometheus conventions: base units,
``_total`` for counters, ``_seconds`` for durations, no colons.  Cardinality of the
sidecar's token counters is layers × local slots per pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Metric:
    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str


# Sidecar, one pod each ------------------------------------------------------------------
EXPERT_TOKENS = Metric(
    "eplb_expert_tokens_total",
    "counter",
    ("layer", "expert", "slot"),
    "Tokens the engine routed to a local physical slot, labelled with its logical expert.",
)
LAYER_BALANCEDNESS = Metric(
    "eplb_layer_balancedness",
    "gauge",
    ("layer",),
    "Mean over max rank load of the pod's EP group in the last window (1 is perfect).",
)
LAYER_REVISION = Metric(
    "eplb_layer_revision",
    "gauge",
    ("layer",),
    "Placement revision the engine serves for a layer.",
)
SHUFFLES = Metric(
    "eplb_shuffles_total",
    "counter",
    ("phase", "result"),
    "Prepare, commit and abort calls handled, by result (success or failure).",
)
SHUFFLE_DURATION = Metric(
    "eplb_shuffle_duration_seconds",
    "histogram",
    ("phase",),
    "Time to prepare or commit one batch of layers on this pod.",
)
SHUFFLE_BYTES = Metric(
    "eplb_shuffle_bytes_total",
    "counter",
    ("source",),
    "Expert weight bytes moved into slots, by source (local, peer, checkpoint).",
)

# Operator, one ExpertPlacement each -----------------------------------------------------
PLACEMENT_BALANCEDNESS = Metric(
    "eplb_placement_balancedness",
    "gauge",
    ("namespace", "placement", "source"),
    "Mean over layers of mean/max rank load; source is observed (Prometheus) or predicted.",
)
PLACEMENT_LAYER_BALANCEDNESS = Metric(
    "eplb_placement_layer_balancedness",
    "gauge",
    ("namespace", "placement", "layer", "source"),
    "Mean over max rank load of one layer; source is observed (Prometheus) or predicted.",
)
PLACEMENT_MOVES = Metric(
    "eplb_placement_moves_total",
    "counter",
    ("namespace", "placement"),
    "Expert slots whose weights were replaced by rollouts.",
)
ROLLOUTS = Metric(
    "eplb_rollouts_total",
    "counter",
    ("namespace", "placement", "result"),
    "Rollouts finished, by result (completed, aborted, rolled_back).",
)
ROLLOUT_IN_PROGRESS = Metric(
    "eplb_rollout_in_progress",
    "gauge",
    ("namespace", "placement"),
    "1 while a rollout is under way, else 0.",
)
ROLLOUT_STARTED = Metric(
    "eplb_rollout_started_timestamp_seconds",
    "gauge",
    ("namespace", "placement"),
    "Unix time the current (or last) rollout started.",
)
ROLLOUT_DURATION = Metric(
    "eplb_rollout_duration_seconds",
    "histogram",
    ("namespace", "placement"),
    "Time from first prepare to last commit of a rollout.",
)
BARRIER_DURATION = Metric(
    "eplb_barrier_duration_seconds",
    "histogram",
    ("namespace", "placement", "phase"),
    "Time for every pod to answer one prepare or commit round.",
)
RECONCILE_ERRORS = Metric(
    "eplb_reconcile_errors_total",
    "counter",
    ("namespace", "placement", "reason"),
    "Reconciles that failed, by reason (e.g. MetricsUnavailable, BarrierTimeout).",
)
OPERATOR_LEADER = Metric(
    "eplb_operator_leader",
    "gauge",
    (),
    "1 while this operator replica holds the leader-election Lease (and alone acts), else 0.",
)

ALL: tuple[Metric, ...] = (
    EXPERT_TOKENS,
    LAYER_BALANCEDNESS,
    LAYER_REVISION,
    SHUFFLES,
    SHUFFLE_DURATION,
    SHUFFLE_BYTES,
    PLACEMENT_BALANCEDNESS,
    PLACEMENT_LAYER_BALANCEDNESS,
    PLACEMENT_MOVES,
    ROLLOUTS,
    ROLLOUT_IN_PROGRESS,
    ROLLOUT_STARTED,
    ROLLOUT_DURATION,
    BARRIER_DURATION,
    RECONCILE_ERRORS,
    OPERATOR_LEADER,
)


def exported_series_names() -> set[str]:
    """Names as they appear in Prometheus (histograms expand to _bucket, _sum, _count)."""
    names: set[str] = set()
    for metric in ALL:
        if metric.type == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        else:
            names.add(metric.name)
    return names


def instrument(metric: Metric, registry: CollectorRegistry, buckets: Sequence[float] = ()) -> Any:
    """A prometheus_client metric for one row of the table (histograms use ``buckets``)."""
    labels = list(metric.labels)
    if metric.type == "counter":  # prometheus_client appends _total itself
        return Counter(metric.name.removesuffix("_total"), metric.help, labels, registry=registry)
    if metric.type == "histogram":
        return Histogram(metric.name, metric.help, labels, buckets=buckets, registry=registry)
    return Gauge(metric.name, metric.help, labels, registry=registry)
