"""What every stand-in shares: an HTTP server, the step loop, a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web

from eplb_local.standin.model import StandinModel
from eplb_local.standin.routing import StepLoad, TokenRouter

log = logging.getLogger("eplb-standin")


def fail(engine: str, message: str) -> NoReturn:
    """Refuse to start, as an engine does on a bad start-up file: one line, exit 1."""
    print(f"{engine} stand-in: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


async def health(_: web.Request) -> web.Response:
    return web.Response(text="")


def serve(
    routes: list[web.RouteDef],
    host: str,
    port: int,
    model: StandinModel,
    router: TokenRouter,
    on_step: Callable[[int, StepLoad], None],
) -> None:
    """Serve ``routes`` (plus ``/health``) and run steps, calling ``on_step(iteration,
    load)`` after each, until SIGTERM."""
    asyncio.run(_serve(routes, host, port, model, router, on_step))


async def _serve(
    routes: list[web.RouteDef],
    host: str,
    port: int,
    model: StandinModel,
    router: TokenRouter,
    on_step: Callable[[int, StepLoad], None],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = web.Application()
    app.add_routes([web.get("/health", health), *routes])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("serving on %s:%d", host, port)
    iteration = 0
    while not stop.is_set():
        on_step(iteration, router.step())
        iteration += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), model.step_seconds)
    await runner.cleanup()
