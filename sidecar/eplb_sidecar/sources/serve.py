"""The sidecar of an engine with a load source: polls it, serves ``/metrics`` and ``/healthz``.

No expert table and no control API: the placement reaches such an engine at its next start
(the operator's Restart rollout), so this sidecar only measures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from eplb_sidecar.server import healthz
from eplb_sidecar.sources import SourceName
from eplb_sidecar.sources.counters import CountersCollector, ExpertCounters

log = logging.getLogger("eplb_sidecar.sources")
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


class LoadSource(Protocol):
    def describe(self) -> str: ...

    async def poll(self) -> None: ...


@dataclass(frozen=True)
class SourceOptions:
    """What ``eplb-sidecar serve --source …`` was told (checked by :func:`build_source`)."""

    source: SourceName
    stats_path: Path | None = None  # vllm-stats: the JSONL; sglang, trtllm: the directory
    engine_url: str | None = None  # sglang
    placement_file: Path | None = None  # trtllm: the balancer YAML the engine started from
    layer_ids: list[int] | None = None
    experts: int | None = None
    poll_seconds: float = 5.0


def build_source(options: SourceOptions, counters: ExpertCounters) -> LoadSource:
    """The source ``options`` name; ValueError (one line) when an option it needs is missing."""
    from eplb_sidecar.sources.sglang import SglangSource
    from eplb_sidecar.sources.trtllm import TrtllmSource
    from eplb_sidecar.sources.vllm_stats import VllmStatsSource

    path = options.stats_path
    if path is None:
        raise ValueError(f"--source {options.source} needs --stats-path")
    if options.source == "vllm-stats":
        return VllmStatsSource(path, counters, options.layer_ids, options.experts)
    if options.source == "sglang":
        if not options.engine_url:
            raise ValueError("--source sglang needs --engine-url (SGLang's HTTP server)")
        return SglangSource(options.engine_url, path, counters, options.layer_ids)
    if options.source == "trtllm":
        return TrtllmSource(path, counters, options.layer_ids, options.experts,
                            options.placement_file)  # fmt: skip
    raise ValueError(f"--source {options.source} is not a load source")


async def poll_forever(source: LoadSource, seconds: float) -> None:
    log.info("reading load from %s every %.1f s", source.describe(), seconds)
    while True:
        try:
            await source.poll()
        except Exception:  # one bad poll must not stop the exporter
            log.exception("polling %s failed", source.describe())
        await asyncio.sleep(seconds)


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(request.app[REGISTRY_KEY])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app[REGISTRY_KEY] = registry
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz)])
    return app


def source_apps(
    source: LoadSource, counters: ExpertCounters, poll_seconds: float
) -> tuple[web.Application, Callable[[], Coroutine[Any, Any, None]]]:
    """The metrics app of ``counters`` and the task that polls ``source`` into them."""
    registry = CollectorRegistry()
    registry.register(CountersCollector(counters))
    return metrics_app(registry), lambda: poll_forever(source, poll_seconds)
