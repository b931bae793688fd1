"""``eplb cluster``: a real Kubernetes control plane and its node on this machine, until Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer


def cluster_command(
    workdir: Annotated[
        Path, typer.Option(help="Where the cluster keeps its state, logs and kubeconfig.")
    ] = Path(".eplb-cluster"),
) -> None:
    """Run etcd, kube-apiserver, kube-controller-manager, the LeaderWorkerSet controller and a
    local node agent (pods run as processes of this machine), with the ExpertPlacement CRD
    installed; Ctrl-C stops them."""
    from eplb_local.kube.binaries import MissingBinaryError
    from eplb_local.world import LocalKube

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with LocalKube(workdir.resolve()) as kube:
            kube.ensure_lws()  # so that LeaderWorkerSet manifests apply as on a cluster
            assert kube.plane is not None
            typer.echo(f"Kubernetes API on {kube.plane.url}")
            typer.echo(f"export KUBECONFIG={kube.kubeconfig}")
            while not stop.wait(0.5):
                pass
    except (MissingBinaryError, PermissionError) as error:
        print(f"eplb cluster: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    typer.echo("stopped")
