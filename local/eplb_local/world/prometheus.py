"""A real Prometheus (the ``prometheus`` binary) scraping the sidecars a PodMonitor selects.

Debian's Prometheus is built without ``kubernetes_sd_configs``, so the targets come from a
file (``file_sd_configs``) that ``refresh()`` rewrites from the API server's pods: the
``eplb-metrics`` port of every running pod labelled ``eplb.io/sidecar: "true"`` in the
namespace, with the ``namespace`` and ``pod`` labels the operator's queries use, under the
job name a PodMonitor gets — what the chart's PodMonitor makes the Prometheus Operator
configure. Prometheus notices the file change at once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import yaml

from eplb_local.kube.api import Api
from eplb_local.processes import free_port, stop_processes


class PrometheusMissingError(FileNotFoundError):
    """No ``prometheus`` binary on PATH (Debian/Ubuntu: ``apt-get install prometheus``)."""


class LocalPrometheus:
    def __init__(
        self,
        workdir: Path,
        api: Api,
        namespace: str,
        host: str,
        scrape_interval: str = "1s",
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusMissingError(
                "prometheus not found on PATH: install the 'prometheus' package "
                "(scripts/setup.sh does)"
            )
        self.binary = binary
        self.workdir = workdir
        self.api = api
        self.namespace = namespace
        self.host = host  # the pod network's host address: the operator's pod reaches it there
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.workdir / "targets.json"

    def config(self) -> dict[str, object]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": f"podMonitor/{self.namespace}/eplb-sidecars/0",
                    "file_sd_configs": [{"files": [str(self.targets_file)]}],
                }
            ],
        }

    def refresh(self) -> None:
        """Write the targets the PodMonitor would select now (atomically, only on change)."""
        reply = self.api.get(
            f"/api/v1/namespaces/{self.namespace}/pods", labelSelector="eplb.io/sidecar=true"
        )
        targets = []
        for pod in reply.body.get("items", []) if reply.code == 200 else []:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or "deletionTimestamp" in pod["metadata"]:
                continue
            for container in pod["spec"]["containers"]:
                for port in container.get("ports", []):
                    if port.get("name") == "eplb-metrics":
                        labels = {
                            "namespace": self.namespace,
                            "pod": pod["metadata"]["name"],
                            "job": "eplb-sidecar",
                        }  # as the PodMonitor relabels it
                        targets.append({"targets": [f"{ip}:{port['containerPort']}"],
                                        "labels": labels})  # fmt: skip
        text = json.dumps(sorted(targets, key=lambda t: t["labels"]["pod"]), indent=1)
        if self.targets_file.exists() and self.targets_file.read_text() == text:
            return
        staging = self.targets_file.with_suffix(".tmp")
        staging.write_text(text)
        staging.replace(self.targets_file)

    def start(self, timeout: float = 60.0) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.refresh()
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 — lives with the process
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
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
