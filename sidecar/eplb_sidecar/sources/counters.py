"""Cumulative token counts per (engine layer id, logical expert), and their exporter."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from eplb_sidecar import metric_names as names

# A source's series carry no slot: its engine reports logical experts (or is folded to them).
SOURCE_LABELS = ("layer", "expert")


class ExpertCounters:
    """Tokens routed to each logical expert of each MoE layer since the sidecar started.

    Counters only grow (Prometheus ``increase`` turns them into windows); a layer's row
    appears with its first counts, so ``E`` is fixed by the first report of the layer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, np.ndarray] = {}  # engine layer id → [E] float64

    def add(self, layer_ids: Sequence[int], load: np.ndarray) -> None:
        """Add ``load`` ``[L, E]`` (tokens per logical expert) to layers ``layer_ids`` ``[L]``.

        Raises ValueError, adding nothing, when a row's width differs from earlier reports.
        """
        if load.ndim != 2 or load.shape[0] != len(layer_ids):
            raise ValueError(f"load {list(load.shape)} does not fit {len(layer_ids)} layer ids")
        with self._lock:
            for layer, row in zip(layer_ids, load, strict=True):
                known = self._rows.get(layer)
                if known is not None and known.shape != row.shape:
                    raise ValueError(
                        f"layer {layer} counts {row.shape[0]} experts; earlier reports "
                        f"{known.shape[0]}"
                    )
            for layer, row in zip(layer_ids, load, strict=True):
                known = self._rows.get(layer)
                self._rows[layer] = row.astype(np.float64) + (0.0 if known is None else known)

    def snapshot(self) -> dict[int, np.ndarray]:
        """Engine layer id → ``[E]`` tokens so far (copies)."""
        with self._lock:
            return {layer: row.copy() for layer, row in self._rows.items()}


class CountersCollector(Collector):
    """``eplb_expert_tokens_total{layer, expert}`` from :class:`ExpertCounters`."""

    def __init__(self, counters: ExpertCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            names.EXPERT_TOKENS.name.removesuffix("_total"),
            names.EXPERT_TOKENS.help,
            labels=list(SOURCE_LABELS),
        )
        for layer, row in sorted(self.counters.snapshot().items()):
            for expert, value in enumerate(row.tolist()):
                tokens.add_metric([str(layer), str(expert)], value)
        yield tokens
