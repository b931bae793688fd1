"""``ControlPlane``: etcd, kube-apiserver and kube-controller-manager as local processes.

The real programs (``binaries.py``), started with what a kubeadm cluster runs: RBAC and
Node authorization, the default admission plugins, ServiceAccount tokens signed with keys
made on first start (``pki.py``), TokenReview and SubjectAccessReview served by the API
server, and the controller-manager's garbage collector, Deployment, ReplicaSet,
StatefulSet, ServiceAccount-token and namespace controllers, each controller under its own
ServiceAccount; the node agent (``eplb_local.node``) that runs the pods they create; and, once
its CRD is in (``start_lws``), the LeaderWorkerSet controller (``lws.py``).

Ports are picked free on 127.0.0.1; the admin kubeconfig is ``<workdir>/kubeconfig``.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from eplb_local.kube import lws
from eplb_local.kube.binaries import binary, lws_dir
from eplb_local.kube.pki import ClusterPki, KeyPair, ensure_pki
from eplb_local.node.network import PodNetwork
from eplb_local.processes import free_port, stop_processes

SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# What the API server records: every request by a ServiceAccount outside kube-system (the
# operator, Prometheus, tests' accounts) at Metadata level — verb, resource, user, code —
# so a test can read off exactly which permissions a component used.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}
# Every on-by-default controller but two: node IPAM needs a pod network, and node lifecycle
# would evict every pod when a heartbeat of the node agent is late on a loaded 2-core box.
CONTROLLERS = "*,-node-ipam-controller,-node-lifecycle-controller"


def kubeconfig(
    server: str, ca: Path, client: KeyPair, namespace: str = "default"
) -> dict[str, Any]:
    """A kubeconfig with the certificates inlined, so it works wherever it is copied."""
    import base64

    def data(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority-data": data(ca)}}
        ],
        "users": [
            {
                "name": "local",
                "user": {
                    "client-certificate-data": data(client.cert),
                    "client-key-data": data(client.key),
                },
            }
        ],
        "contexts": [
            {
                "name": "local",
                "context": {"cluster": "local", "user": "local", "namespace": namespace},
            }
        ],
        "current-context": "local",
    }


@dataclass
class ControlPlane:
    """Start with ``with ControlPlane(workdir) as plane:``; ``plane.kubeconfig`` is the admin's."""

    workdir: Path
    node_name: str = "eplb-local-node"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    url: str = ""
    pki: ClusterPki | None = None
    network: PodNetwork | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        """JSON lines, one audit event per request of a ServiceAccount (``AUDIT_POLICY``)."""
        return self.workdir / "audit.log"

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        if os.geteuid() != 0:
            raise PermissionError(
                "the local cluster runs as root (its node gives each pod network and mount "
                "namespaces); run as root, or point KUBECONFIG at a cluster you have"
            )
        self.network = network = PodNetwork.claim(os.getpid())
        network.setup()
        self.pki = pki = ensure_pki(self.workdir / "pki", self.node_name, network.gateway)
        etcd_dir = self.workdir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)  # a fresh cluster every start
        shutil.rmtree(self.node_root, ignore_errors=True)
        etcd_port, etcd_peer, cm_port = (free_port() for _ in range(3))
        # 443 on the pod network's host address (each cluster has its own): in-cluster
        # clients such as kopf go to https://kubernetes.default.svc, port 443 implied.
        api_port = 443
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", [
            f"--data-dir={etcd_dir}", "--name=local",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=local=http://127.0.0.1:{etcd_peer}",
            # A throwaway cluster: fsync buys nothing here and costs seconds on a slow disk.
            "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip
        self._wait(f"{etcd_url}/health", timeout, "etcd")
        # On the pod network's host address: pods reach it there, and so does this machine.
        self.url = f"https://{network.gateway}:{api_port}"
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log.unlink(missing_ok=True)
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            f"--bind-address={network.gateway}", f"--advertise-address={network.gateway}",
            f"--secure-port={api_port}", f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}", f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ])  # fmt: skip
        self._write_kubeconfig(self.kubeconfig, pki.admin)
        self._write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig", pki.controller_manager
        )
        self._write_kubeconfig(self.workdir / "node.kubeconfig", pki.node)
        self._wait(f"{self.url}/readyz", timeout, "kube-apiserver")
        cm_kubeconfig = str(self.workdir / "controller-manager.kubeconfig")
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={cm_kubeconfig}",
            f"--authentication-kubeconfig={cm_kubeconfig}",
            f"--authorization-kubeconfig={cm_kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={cm_port}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            "--use-service-account-credentials=true",
            f"--controllers={CONTROLLERS}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false", "--v=1",
        ])  # fmt: skip
        self._wait(f"https://127.0.0.1:{cm_port}/healthz", timeout, "kube-controller-manager")
        self._spawn("node", [
            "--kubeconfig", str(self.kubeconfig), "--root", str(self.workdir / "node"),
            "--apiserver-port", str(api_port), "--pod-network", str(network.index),
        ], [sys.executable, "-m", "eplb_local.node"])  # fmt: skip

    def start_lws(self, timeout: float = 120.0) -> str:
        """Start the LeaderWorkerSet controller (its CRD and ClusterRole must be in); return
        the base URL of its webhooks, to register them by."""
        assert self.pki is not None
        directory = self.workdir / "lws"
        certs = directory / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        # controller-runtime's webhook server reads these two names from its certDir.
        shutil.copyfile(self.pki.lws_webhook.cert, certs / "tls.crt")
        shutil.copyfile(self.pki.lws_webhook.key, certs / "tls.key")
        kubeconfig_path = directory / "kubeconfig"
        self._write_kubeconfig(kubeconfig_path, self.pki.lws_client)
        port, health = free_port(), free_port()
        config = directory / "config.yaml"
        config.write_text(yaml.safe_dump(lws.controller_config(port, certs, health)))
        self._spawn("lws-controller", [f"--config={config}", "--zap-devel=false"],
                    env={**os.environ, "KUBECONFIG": str(kubeconfig_path)})  # fmt: skip
        self._wait(f"http://127.0.0.1:{health}/readyz", timeout, "lws-controller")
        return f"https://127.0.0.1:{port}"

    @property
    def lws_config(self) -> Path:
        """The LeaderWorkerSet release's manifests (CRD, webhooks, ClusterRole)."""
        return lws_dir() / "config"

    @property
    def node_root(self) -> Path:
        """Where the node agent keeps its pods: ``pods/<namespace>_<name>_<uid>/``."""
        return self.workdir / "node"

    def stop(self) -> None:
        stop_processes(list(reversed(self.processes.values())))
        self.processes.clear()
        if self.network is not None:
            self.network.teardown()
            self.network = None

    def _write_kubeconfig(self, path: Path, client: KeyPair) -> None:
        assert self.pki is not None
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(kubeconfig(self.url, self.pki.ca.cert, client)))

    def restart_apiserver(self, timeout: float = 120.0) -> None:
        """Stop kube-apiserver and start it again, as an upgrade or a crash does: every
        client's watch breaks, and resumes against a new watch cache."""
        process = self.processes["kube-apiserver"]
        stop_processes([process])
        self._spawn(
            "kube-apiserver",
            self.commands["kube-apiserver"][1:],
            self.commands["kube-apiserver"][:1],
        )
        self._wait(f"{self.url}/readyz", timeout, "kube-apiserver")

    def _spawn(
        self,
        name: str,
        args: list[str],
        program: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        command = [*(program or [str(binary(name))]), *args]
        self.commands[name] = command
        with open(self.log(name), "ab") as out:
            self.processes[name] = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        if self.network is not None:
            self.network.record([process.pid for process in self.processes.values()])

    def _wait(self, url: str, timeout: float, name: str) -> None:
        """Until ``url`` answers 200 (with the admin's certificate on https)."""
        context = None
        if url.startswith("https") and self.pki is not None:
            context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
            context.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
            if "controller" in name:  # its serving certificate is self-signed
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while True:
            process = self.processes[name]
            if process.poll() is not None:
                tail = self.log(name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout:.0f} s; see {self.log(name)}")
            time.sleep(0.2)
