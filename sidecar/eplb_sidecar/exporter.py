"""``/metrics``: the engine's per-slot token counters and the sidecar's own figures.

Token counters are read from the expert table at scrape time (no copy, no thread).  A
slot's series is labelled with the logical expert it holds now; when a commit gives the
slot another expert, the old series disappears and the new one starts from zero (the
counter base recorded at commit), so cardinality stays layers × local slots.  A pod of
several ranks exports the slots of every local table (their global slot numbers differ).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

import torch
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eplb_sidecar import metric_names as names
from eplb_sidecar.contract.pod import PodTables
from eplb_sidecar.contract.table import ExpertTable

SHUFFLE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class TableCollector(Collector):
    """Token counters, revision per layer and the group's balancedness over ``window`` s,
    of the pod's local tables (one per local rank)."""

    def __init__(self, tables: list[ExpertTable], window_seconds: float = 60.0) -> None:
        self.tables = tables
        self.window_seconds = window_seconds
        self._history: deque[tuple[float, torch.Tensor]] = deque()

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            names.EXPERT_TOKENS.name.removesuffix("_total"),
            names.EXPERT_TOKENS.help,
            labels=list(names.EXPERT_TOKENS.labels),
        )
        for table in self.tables:
            layout = table.layout
            first, S = layout.first_slot, layout.slots_per_rank
            counts = (table.counters - table.counter_base).tolist()
            experts = table.local_placement().tolist()
            for layer in range(layout.layers):
                for slot in range(S):
                    tokens.add_metric(
                        [str(layer), str(experts[layer][slot]), str(first + slot)],
                        counts[layer][slot],
                    )
        yield tokens

        revision = GaugeMetricFamily(
            names.LAYER_REVISION.name, names.LAYER_REVISION.help, labels=["layer"]
        )
        # Commits flip every local table together: the first one speaks for the pod.
        for layer, value in enumerate(self.tables[0].revisions.tolist()):
            revision.add_metric([str(layer)], value)
        yield revision

        balancedness = self._balancedness()
        if balancedness is not None:
            gauge = GaugeMetricFamily(
                names.LAYER_BALANCEDNESS.name, names.LAYER_BALANCEDNESS.help, labels=["layer"]
            )
            for layer, value in enumerate(balancedness.tolist()):
                gauge.add_metric([str(layer)], value)
            yield gauge

    def _balancedness(self) -> torch.Tensor | None:
        """``[L]`` mean/max rank load over the window, from the engine's group loads.

        None when the engine does not report group loads or no tokens arrived in the window.
        """
        # Each local engine counts the group's tokens per rank as it saw them: summed.
        load = torch.stack([table.group_load for table in self.tables]).sum(dim=0)
        if any(bool((table.group_load < 0).any()) for table in self.tables):
            return None
        now = time.monotonic()
        self._history.append((now, load))
        while len(self._history) > 1 and self._history[1][0] <= now - self.window_seconds:
            self._history.popleft()
        delta = (load - self._history[0][1]).double()
        if len(self._history) == 1 or bool((delta.sum(dim=1) == 0).any()):
            return None
        return delta.mean(dim=1) / delta.max(dim=1).values


class SidecarMetrics:
    """The sidecar's registry: table series plus shuffle counters and durations."""

    def __init__(self, table: ExpertTable | PodTables) -> None:
        tables = table.tables if isinstance(table, PodTables) else [table]
        self.registry = CollectorRegistry()
        self.registry.register(TableCollector(tables))
        self.shuffles = names.instrument(names.SHUFFLES, self.registry)
        self.duration = names.instrument(names.SHUFFLE_DURATION, self.registry, SHUFFLE_BUCKETS)
        self.bytes = names.instrument(names.SHUFFLE_BYTES, self.registry)
