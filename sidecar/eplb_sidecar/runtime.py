"""Process entry points: the sidecar (control + metrics servers), and serving an engine."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from aiohttp import web

from eplb_sidecar.auth import (
    DEFAULT_AUDIENCE,
    SERVICE_ACCOUNT_DIR,
    ApiServer,
    Authenticator,
    KubernetesAuth,
    TokenFileAuth,
)
from eplb_sidecar.checkpoint import DEFAULT_KEY_TEMPLATE, CheckpointReader
from eplb_sidecar.contract.pod import PodTables
from eplb_sidecar.engine.server import ServedEngine, engine_app
from eplb_sidecar.exporter import SidecarMetrics
from eplb_sidecar.hooks import installed_hooks
from eplb_sidecar.server import control_app, metrics_app
from eplb_sidecar.shuffle import ShuffleExecutor
from eplb_sidecar.sources.counters import ExpertCounters
from eplb_sidecar.sources.serve import LoadSource, source_apps
from eplb_sidecar.transfer import Backend, PeerGroups

log = logging.getLogger("eplb_sidecar")

AuthMode = Literal["kubernetes", "token-file"]


@dataclass(frozen=True)
class SidecarOptions:
    table_dir: Path
    pod: str
    # token-file: a bearer token in this file (no Kubernetes); kubernetes: TokenReview for
    # audience, SubjectAccessReview in namespace (eplb_sidecar.auth).
    auth: AuthMode = "kubernetes"
    token_file: Path | None = None
    audience: str = DEFAULT_AUDIENCE
    namespace: str = ""
    bind: str = "0.0.0.0"
    control_port: int = 8470
    metrics_port: int = 9470
    transfer_port: int = 29470
    peer_transfers: bool = True
    backend: Backend = "gloo"
    checkpoint: Path | None = None
    checkpoint_key: str = DEFAULT_KEY_TEMPLATE
    wait_seconds: float = 300.0
    ports_file: Path | None = None
    # EP ranks of the pod: one table per local rank under table_dir/local-k (see
    # eplb_sidecar.contract.pod).
    ranks_per_pod: int = 1


async def _serve(
    apps: list[tuple[str, web.Application, str, int]],
    ports_file: Path | None,
    extra_ports: dict[str, int] | None = None,
    tasks: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> None:
    """Serve ``(role, app, host, port)`` until SIGTERM, running ``tasks`` beside; port 0 binds
    any free port, and ``ports_file`` then tells the bound ports (role → port) to whoever
    started us."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    ports = dict(extra_ports or {})
    for role, app, host, port in apps:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        ports[role] = int(runner.addresses[0][1])
    log.info("listening: %s", ports)
    if ports_file is not None:
        tmp = ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports))
        tmp.replace(ports_file)
    running = [asyncio.create_task(task()) for task in tasks]
    await stop.wait()
    for task in running:
        task.cancel()
    for runner in runners:
        await runner.cleanup()


def run_sidecar(options: SidecarOptions, auth: Authenticator | None = None) -> None:
    """Attach to the engine's tables (waiting for them) and serve until SIGTERM; ``auth``
    defaults to what ``options`` say (:func:`authenticator`)."""
    if auth is None:
        auth = authenticator(options)
    tables = PodTables.attach(options.table_dir, options.ranks_per_pod, options.wait_seconds)
    table = tables.tables[0]
    device = torch.device(table.layout.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL and staging use the engine's GPU
    peers = (
        PeerGroups(options.bind, options.transfer_port, options.backend, auth.transfer_secret)
        if options.peer_transfers
        else None
    )
    checkpoint = (
        CheckpointReader(options.checkpoint, table.layout.weights, options.checkpoint_key)
        if options.checkpoint
        else None
    )
    hooks = installed_hooks()
    executor = ShuffleExecutor(tables, options.pod, peers, checkpoint, tamper=hooks.outgoing)
    metrics = SidecarMetrics(tables)
    control = control_app(executor, metrics, auth, hooks)
    apps = [
        ("control", control, options.bind, options.control_port),
        ("metrics", metrics_app(metrics), options.bind, options.metrics_port),
    ]
    transfer = {"transfer": peers.port} if peers is not None else {}
    asyncio.run(_serve(apps, options.ports_file, transfer))


def authenticator(options: SidecarOptions) -> Authenticator:
    """Who may call the control API (see eplb_sidecar.auth); ValueError for bad options."""
    if options.auth == "token-file":
        if options.token_file is None:
            raise ValueError("--auth token-file needs --token-file")
        if not options.token_file.is_file():
            # Served anyway: /metrics keeps flowing, and the control API answers 503
            # TokenUnavailable until the file appears (it is re-read on every call).
            log.warning("token file %s does not exist (yet)", options.token_file)
        return TokenFileAuth(options.token_file)
    server = ApiServer.in_cluster(dict(os.environ))
    namespace = options.namespace
    if not namespace:
        try:
            namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        except OSError as error:
            raise ValueError(
                f"--auth kubernetes needs --namespace (or POD_NAMESPACE): {error}"
            ) from error
    return KubernetesAuth(server, namespace, options.audience)


def run_source_sidecar(
    source: LoadSource,
    counters: ExpertCounters,
    poll_seconds: float,
    bind: str,
    metrics_port: int,
    ports_file: Path | None = None,
) -> None:
    """A sidecar without an expert table: export an engine's own load output until SIGTERM."""
    app, poll = source_apps(source, counters, poll_seconds)
    asyncio.run(_serve([("metrics", app, bind, metrics_port)], ports_file, tasks=[poll]))


def serve_engine(
    engine: ServedEngine, bind: str, port: int, ports_file: Path | None = None
) -> None:
    """Serve an engine that has published its table: batches and the engine API, until SIGTERM."""
    asyncio.run(_serve([("engine", engine_app(engine), bind, port)], ports_file))
