"""An engine's own HTTP API (what vLLM's server is to vLLM): workload and probes.

``GET /healthz``; ``GET /v1/status``; ``GET|POST /v1/workload`` (:class:`Workload`);
``POST /v1/probe`` (:class:`ProbeRequest` → the engine's probe answer: the reference
engine's :class:`ProbePart`, the transformers adapter's logits).  The serving loop runs in a
thread from startup to cleanup.  Served for the reference engine and for the ``transformers``
adapter alike (:class:`ServedEngine`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import web
from pydantic import BaseModel, ValidationError

from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.probe import ProbeRequest


class ServedEngine(Protocol):
    """What the engine API needs of an engine."""

    config: EngineConfig
    table: ExpertTable
    workload: Workload
    steps: int
    tokens_served: int

    def set_workload(self, workload: Workload) -> None: ...

    def probe(self, request: ProbeRequest) -> BaseModel: ...

    def serve(self, stop: threading.Event) -> None: ...


ENGINE_KEY: web.AppKey[ServedEngine] = web.AppKey("engine")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response(
        {
            "rank": engine.config.rank,
            "steps": engine.steps,
            "tokens_served": engine.tokens_served,
            "epoch": engine.table.epoch,
            "revisions": engine.table.revisions.tolist(),
            "workload": engine.workload.model_dump(),
        }
    )


async def workload(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    if request.method == "POST":
        try:
            update = await request.json()
            engine.set_workload(Workload.model_validate(engine.workload.model_dump() | update))
        except (ValidationError, ValueError, TypeError) as error:
            return web.json_response(
                {"reason": "InvalidRequest", "message": str(error)}, status=400
            )
    return web.json_response(engine.workload.model_dump())


async def probe(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    try:
        body = ProbeRequest.model_validate(await request.json())
    except (ValidationError, ValueError) as error:
        return web.json_response({"reason": "InvalidRequest", "message": str(error)}, status=400)
    part = await asyncio.to_thread(engine.probe, body)
    return web.json_response(part.model_dump())


def engine_app(engine: ServedEngine) -> web.Application:
    app = web.Application()
    app[ENGINE_KEY] = engine

    async def serving(app: web.Application) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=engine.serve, args=(stop,), name="engine", daemon=True)
        thread.start()
        yield
        stop.set()
        await asyncio.to_thread(thread.join, 10)

    app.cleanup_ctx.append(serving)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/v1/status", status),
            web.get("/v1/workload", workload),
            web.post("/v1/workload", workload),
            web.post("/v1/probe", probe),
        ]
    )
    return app
