"""``python -m eplb_operator.controller.run``: the operator's process (the image's entrypoint).

kopf serves ExpertPlacements (:mod:`eplb_operator.controller.handlers`) only in the replica
that holds the leader-election Lease (:mod:`eplb_operator.controller.election`):

1. ``/healthz`` and ``/metrics`` are served from the start, by followers too: a follower is
   healthy and Ready (it stands by), and ``eplb_operator_leader`` says which replica leads.
2. A follower tries the Lease every retry period and does nothing else: no watch, no
   finalizer, no write, so two replicas never meddle with one ExpertPlacement.
3. The leader runs kopf and renews the Lease meanwhile.  Lost (no renewal within the renew
   deadline, or taken by another), kopf is stopped at once, its daemons cancelling their
   passes where they are (the next leader resumes a rollout from what the pods serve); the
   finalizers stay (the new leader's), and the process exits 1 to come back as a follower
   (client-go's and controller-runtime's convention; kopf is not run twice in a process).
4. SIGTERM: the leader stops kopf gracefully (its cleanup takes the finalizers off, see
   handlers.py), then gives the Lease up, so that a follower takes over at its next retry
   rather than after the lease duration; a follower just exits.

Without ``--lease`` kopf runs at once: one replica only (the chart refuses more).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

import kopf
from aiohttp import web

from eplb_operator.controller import handlers
from eplb_operator.controller.election import ElectionSettings, LeaseElector
from eplb_operator.controller.kube import api_client
from eplb_operator.controller.metrics import METRICS

log = logging.getLogger("eplb_operator.run")
EXIT_LEADERSHIP_LOST = 1  # the container restarts, as a follower
STOP_SECONDS = 30.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eplb-operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--namespace", action="append", default=[], help="watch it (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true")
    parser.add_argument("--health-port", type=int, default=8081, help="/healthz")
    parser.add_argument("--log-level", choices=["debug", "info", "warning"], default="info")
    election = parser.add_argument_group("leader election (a coordination.k8s.io/v1 Lease)")
    election.add_argument("--lease", default="", help="its name; empty: no leader election")
    election.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", ""))
    election.add_argument(
        "--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this candidate's name in the Lease (default: $POD_NAME)",
    )  # fmt: skip
    election.add_argument("--lease-duration", type=int, default=15, help="whole seconds")
    election.add_argument("--renew-deadline", type=float, default=10.0)
    election.add_argument("--retry-period", type=float, default=2.0)
    options = parser.parse_args(argv)
    if options.lease:
        options.election = ElectionSettings(
            options.lease, options.lease_namespace, options.identity, options.lease_duration,
            options.renew_deadline, options.retry_period,
        )  # fmt: skip
        problem = options.election.problem()
        if problem is not None:
            parser.error(f"leader election: {problem}")
    else:
        options.election = None
    return options


async def serve_health(port: int, elector: LeaseElector | None) -> web.AppRunner:
    """``GET /healthz`` on ``port``, answered by this event loop (so a stuck loop fails it)."""

    async def healthz(_: web.Request) -> web.Response:
        leading = elector is None or elector.leading
        return web.json_response({"ok": True, "leader": leading})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


def operator(options: argparse.Namespace, stop: asyncio.Event | None = None) -> Any:
    """kopf, serving handlers.py's ExpertPlacement handlers, until ``stop`` is set (a
    coroutine)."""
    return kopf.operator(
        standalone=True,  # no kopf peering: see election.py
        clusterwide=options.all_namespaces,
        namespaces=options.namespace,
        stop_flag=stop,
    )


async def lead(options: argparse.Namespace, elector: LeaseElector) -> int:
    """Follow until leading, then run kopf while the Lease is held; the exit code (see the
    module doc)."""
    loop = asyncio.get_running_loop()
    terminate = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):  # kopf puts its own while it runs
        loop.add_signal_handler(number, terminate.set)
    acquiring = asyncio.create_task(elector.acquire())
    terminating = asyncio.create_task(terminate.wait())
    await asyncio.wait({acquiring, terminating}, return_when=asyncio.FIRST_COMPLETED)
    terminating.cancel()
    if not acquiring.done() or terminate.is_set():  # told to stop while following
        acquiring.cancel()
        await elector.release()
        return 0
    METRICS.leader.set(1)
    stop = asyncio.Event()
    # The renewals first: kopf, once started, counts the tasks it finds as not its own.
    holding = asyncio.create_task(elector.hold())
    serving = asyncio.create_task(operator(options, stop))
    await asyncio.wait({holding, serving}, return_when=asyncio.FIRST_COMPLETED)
    METRICS.leader.set(0)
    if serving.done():  # kopf stopped: SIGTERM (its own handler), or a failure of its own
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
        await elector.release()
        serving.result()
        return 0
    # The Lease is lost: stop acting at once.  The stop flag (not a cancellation, after
    # which kopf would SIGKILL the process ten minutes later) makes kopf stop its daemons
    # first, which cancel their passes; the finalizers stay, the new leader's now.  Then
    # exit, to come back as a follower in a fresh process (client-go's convention: kopf
    # is not run twice in one process).
    handlers.RELEASE_FINALIZERS_AT_EXIT = False
    stop.set()
    try:
        await asyncio.wait_for(serving, STOP_SECONDS)
    except TimeoutError:
        log.error("kopf did not stop within %g s after the Lease was lost", STOP_SECONDS)
    log.info("%s: stopped acting; exiting to follow again", elector.settings.identity)
    return EXIT_LEADERSHIP_LOST


async def run(options: argparse.Namespace) -> int:
    if handlers.METRICS_PORT:
        METRICS.serve(handlers.METRICS_PORT)
    if options.election is None:
        health = await serve_health(options.health_port, None)
        try:
            await operator(options)
            return 0
        finally:
            await health.cleanup()
    async with await api_client() as api:
        elector = LeaseElector(options.election, api)
        health = await serve_health(options.health_port, elector)
        try:
            return await lead(options, elector)
        finally:
            await health.cleanup()


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    level = options.log_level
    kopf.configure(verbose=level == "debug", quiet=level == "warning")
    return asyncio.run(run(options))


if __name__ == "__main__":
    sys.exit(main())
