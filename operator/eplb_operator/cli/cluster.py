"""``eplb cluster``: run the local Kubernetes API (with the project's CRDs) in the foreground."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer


def cluster_command(
    workdir: Annotated[Path, typer.Option(help="Where to write the kubeconfig.")] = Path(
        ".eplb-cluster"
    ),
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1; 0 picks one.")
    ] = 0,
) -> None:
    """Serve a local Kubernetes API for kubectl and kopf until Ctrl-C (no real cluster needed)."""
    from eplb_operator.cluster import LocalCluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalCluster(workdir.resolve(), port=port or None) as cluster:
        typer.echo(f"Kubernetes API on {cluster.url}")
        typer.echo(f"export KUBECONFIG={cluster.kubeconfig}")
        while not stop.wait(0.5):
            pass
    typer.echo("stopped")
