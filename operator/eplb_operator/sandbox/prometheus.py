"""A real Prometheus (the ``prometheus`` binary) scraping local sidecars."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import yaml

from eplb_sidecar.launch import free_port, stop_processes


class PrometheusMissingError(FileNotFoundError):
    """No ``prometheus`` binary on PATH (Debian/Ubuntu: ``apt-get install prometheus``)."""


@dataclass(frozen=True)
class Target:
    """One sidecar to scrape and the labels a PodMonitor would give its series."""

    address: str  # host:port of /metrics
    namespace: str
    pod: str


class LocalPrometheus:
    def __init__(self, workdir: Path, targets: list[Target], scrape_interval: str = "1s") -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusMissingError(
                "prometheus not found on PATH: install the 'prometheus' package "
                "(scripts/setup.sh does)"
            )
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "eplb-sidecars",
                    "static_configs": [
                        {"targets": [t.address], "labels": {"namespace": t.namespace, "pod": t.pod}}
                        for t in self.targets
                    ],
                }
            ],
        }

    def start(self, timeout: float = 60.0) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 — lives with the process
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prometheus did not start; see {self.workdir / 'prometheus.log'}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process])

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
