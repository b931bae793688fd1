"""A real Prometheus (the ``prometheus`` binary) finding the sidecars as a PodMonitor would.

It discovers pods through the API server (``kubernetes_sd_configs``, role ``pod``, the test's
namespace) with a ServiceAccount of its own that may only list and watch pods there, keeps
the containers' ``eplb-metrics`` ports of pods labelled ``eplb.io/sidecar: "true"``, and
gives their series the ``namespace`` and ``pod`` labels the operator's queries use — what
the chart's PodMonitor makes the Prometheus Operator configure.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import yaml

from eplb_local.kube.api import Api
from eplb_sidecar.launch import free_port, stop_processes

ACCOUNT = "eplb-local-prometheus"


class PrometheusMissingError(FileNotFoundError):
    """No ``prometheus`` binary on PATH (Debian/Ubuntu: ``apt-get install prometheus``)."""


class LocalPrometheus:
    def __init__(
        self,
        workdir: Path,
        api: Api,
        ca_file: Path,
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
        self.ca_file = ca_file
        self.namespace = namespace
        self.host = host  # the pod network's host address: the operator's pod reaches it there
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_file(self) -> Path:
        return self.workdir / "token"

    def config(self) -> dict[str, object]:
        relabel = [
            {"source_labels": ["__meta_kubernetes_pod_label_eplb_io_sidecar"],
             "regex": "true", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": "eplb-metrics", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ]  # fmt: skip
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": f"podMonitor/{self.namespace}/eplb-sidecars/0",
                    "kubernetes_sd_configs": [
                        {
                            "role": "pod",
                            "api_server": self.api.url,
                            "namespaces": {"names": [self.namespace]},
                            "tls_config": {"ca_file": str(self.ca_file)},
                            "authorization": {"credentials_file": str(self.token_file)},
                        }
                    ],
                    "relabel_configs": relabel,
                }
            ],
        }

    def grant(self) -> None:
        """Its ServiceAccount, allowed to list and watch the namespace's pods, and a token."""
        base = f"/api/v1/namespaces/{self.namespace}"
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{self.namespace}"
        self.api.post(f"{base}/serviceaccounts", {"metadata": {"name": ACCOUNT}})
        self.api.post(f"{rbac}/roles", {
            "metadata": {"name": ACCOUNT},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
        })  # fmt: skip
        self.api.post(f"{rbac}/rolebindings", {
            "metadata": {"name": ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": self.namespace}],
        })  # fmt: skip
        token = self.api.checked("POST", f"{base}/serviceaccounts/{ACCOUNT}/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        })["status"]["token"]  # fmt: skip
        self.token_file.touch(mode=0o600, exist_ok=True)
        self.token_file.write_text(token)

    def start(self, timeout: float = 60.0) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grant()
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
