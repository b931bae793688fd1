"""The local Kubernetes API (``eplb cluster``) as its own process, like a control plane."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from eplb_sidecar.launch import stop_processes


class ClusterProcess:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def spawn(self) -> ClusterProcess:
        """Start it; :meth:`wait_ready` waits for it (other processes can start meanwhile)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.unlink(missing_ok=True)
        with open(self.workdir / "cluster.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eplb_operator.cli.main", "cluster",
                 "--workdir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 60.0) -> str:
        """The API's URL, once the kubeconfig is written (after the server listens)."""
        deadline = time.monotonic() + timeout
        while not self.kubeconfig.exists():
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the local API exited; see {self.workdir / 'cluster.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the local API did not start in {timeout:g} s")
            time.sleep(0.1)
        config = yaml.safe_load(self.kubeconfig.read_text())
        self.url = str(config["clusters"][0]["cluster"]["server"])
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process])
