"""The operator as its own process (``kopf run``), started and stopped like a Deployment's pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from eplb_sidecar.launch import free_port, stop_processes


class OperatorProcess:
    def __init__(self, kubeconfig: Path, workdir: Path, recheck_seconds: float = 1.0) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.recheck_seconds = recheck_seconds
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"

    def start(self) -> OperatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            EPLB_RECHECK_SECONDS=str(self.recheck_seconds),
            EPLB_METRICS_PORT=str(self.metrics_port),
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",
        )
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                 "-m", "eplb_operator.controller.handlers"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, no cleanup (what a node failure does to the pod)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process], grace=20.0)  # kopf finishes its handlers first

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
