"""``World``: one namespace of the local cluster with the operator and serving replicas.

The operator is installed by ``helm install`` of ``charts/eplb-operator`` (it runs as its
Deployment's pod, with the chart's ServiceAccount and RBAC); each serving replica (EP group)
is a StatefulSet of the reference engine with the sidecar injected by the ``eplb-sidecar``
library chart (``local/charts/reference-moe``), the StatefulSet ordinal the pod's index —
or, with ``workload="LeaderWorkerSet"``, a group of one LeaderWorkerSet, made and labelled
by the real LWS controller, the worker index the pod's index.
Everything a test or the demo reads — expert tables, engine probes, logs, Events — is read
the way an operator of a cluster would, or from the node agent's files for the pods.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from eplb_local.kube.binaries import cache_root
from eplb_local.node.volumes import memory_dir
from eplb_local.world.kube import REPOSITORY, LocalKube
from eplb_local.world.periodic import Periodic
from eplb_local.world.prometheus import LocalPrometheus
from eplb_sidecar.adapters.transformers.options import TransformersOptions
from eplb_sidecar.adapters.transformers.probe import LogitsProbe, merge_logits
from eplb_sidecar.contract.pod import local_table_dirs
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.probe import ProbePart, ProbeRequest, merge_probe_parts

OPERATOR_CHART = REPOSITORY / "charts" / "eplb-operator"
SIDECAR_CHART = REPOSITORY / "charts" / "eplb-sidecar"
SERVING_CHART = REPOSITORY / "local" / "charts" / "reference-moe"
ENGINE_PORT = 8000
SIDECAR_CONTROL_PORT = 8470  # eplb-sidecar's default controlPort
OPERATOR_RELEASE = "eplb"
SERVING_RELEASE = "moe"
CHECKPOINT_MOUNT = "/models/reference"
FAULTS_MOUNT = "/var/run/eplb-faults"
OPERATOR_ACCOUNT = "eplb-eplb-operator"  # the chart's ServiceAccount for release OPERATOR_RELEASE
OPERATOR_LEASE = f"{OPERATOR_ACCOUNT}-leader"  # the chart's leader-election Lease
SIDECAR_AUDIENCE = "eplb-sidecar"  # both charts' default sidecar auth audience
# Pods starting on a loaded 2-core CI machine (every container imports torch) take minutes.
START_TIMEOUT = 300.0


class Discovery(Periodic):
    """Keeps Prometheus's targets in step with the pods, as the Prometheus Operator does."""

    def __init__(self, prometheus: LocalPrometheus) -> None:
        super().__init__("discovery", 0.5)
        self.prometheus = prometheus

    def tick(self) -> None:
        with contextlib.suppress(OSError):  # the API server away a moment: the next tick
            self.prometheus.refresh()


@dataclass(frozen=True)
class ServingPod:
    """One pod of a serving replica, as the API and the node see it."""

    name: str
    uid: str
    group: str
    rank: int  # the pod's index in its group (its EP rank with one rank per pod)
    ip: str
    node_dir: Path  # the node agent's directory of this pod
    ranks_per_pod: int = 1

    @property
    def table_dir(self) -> Path:
        """The expert table: the pod's ``eplb-table`` emptyDir (shared memory)."""
        return memory_dir(self.uid) / "eplb-table"

    @property
    def table_dirs(self) -> list[Path]:
        """The table of each local rank (``table_dir`` itself with one rank per pod)."""
        return local_table_dirs(self.table_dir, self.ranks_per_pod)

    @property
    def engine_urls(self) -> list[str]:
        """The engine API of each local rank (one engine process per rank, port + k)."""
        return [f"http://{self.ip}:{ENGINE_PORT + k}" for k in range(self.ranks_per_pod)]

    @property
    def faults_file(self) -> Path:
        return self.node_dir / "volumes" / "faults" / "fault"

    @property
    def engine_url(self) -> str:
        return f"http://{self.ip}:{ENGINE_PORT}"

    def log(self, container: str) -> str:
        path = self.node_dir / "logs" / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class World:
    kube: LocalKube
    namespace: str
    workdir: Path
    config: EngineConfig
    groups: int = 1
    operator: bool = True
    operator_values: dict[str, Any] = field(default_factory=dict)
    # Merged over the serving chart's values this world sets (reference-moe's).
    serving_values: dict[str, Any] = field(default_factory=dict)
    app: str = "moe"
    with_prometheus: bool = False
    # A Hugging Face MoE model instead of the reference engine (eplb_sidecar.adapters).
    transformers: TransformersOptions | None = None
    # The engine container's user (None: the pod's, the sidecar's 65532); 0 runs it as root.
    engine_user: int | None = None
    # EP ranks per pod: config.ranks / ranks_per_pod pods per group, each running one engine
    # process per local rank and one sidecar for them all.
    ranks_per_pod: int = 1
    # What makes the groups: "StatefulSet" (one per group) or "LeaderWorkerSet" (one in all).
    workload: str = "StatefulSet"
    started: float = 0.0  # monotonic time when every engine was serving
    prometheus: LocalPrometheus | None = None
    _discovery: Discovery | None = None

    @property
    def host_address(self) -> str:
        """This machine's address on the pod network (pods reach its servers there)."""
        assert self.kube.plane is not None and self.kube.plane.network is not None
        return self.kube.plane.network.gateway

    # -- lifecycle -----------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self, timeout: float = START_TIMEOUT) -> Iterator[World]:
        """Started for the block, stopped however it ends: a start that fails half-way
        leaves a namespace and releases to clean up too."""
        try:
            yield self.start(timeout)
        finally:
            self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> World:
        api = self.kube.api_checked()
        reply = api.post("/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        if reply.code not in (201, 409):
            raise RuntimeError(f"namespace {self.namespace}: {reply.code} {reply.body}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        checkpoint = self.workdir / "checkpoint"
        write_checkpoint(checkpoint, self.config)
        _readable_by_all(checkpoint)
        if self.workload == "LeaderWorkerSet":
            self.kube.ensure_lws()
        if self.operator:
            self.install_operator()
        self.install_serving(checkpoint)
        if self.with_prometheus:
            assert self.kube.plane is not None and self.kube.plane.pki is not None
            # Scrapes much finer than a 10 s window: increase() extrapolates each target
            # from its own scrape phase, a bias of up to interval/window per pod.
            self.prometheus = LocalPrometheus(
                self.workdir / "prometheus", self.kube.api_checked(), self.namespace,
                self.host_address, scrape_interval="250ms",
            ).start()  # fmt: skip
            self._discovery = Discovery(self.prometheus)
            self._discovery.start()
        self.wait_ready(timeout)
        self.started = time.monotonic()
        return self

    def install_operator(self, **values: Any) -> None:
        chosen = _merge(
            {
                "crds": {"install": False},
                "operator": {
                    # One operator pod (leader election still on): a second would double the
                    # operator's CPU on a two-core test machine; tests/operator/test_leader.py
                    # runs two.
                    "replicaCount": 1,
                    "watchNamespaces": [self.namespace],
                    "recheckSeconds": 1,
                    # None drops the chart's default emptyDir (Helm's way to unset a value).
                    "compileCache": {
                        "emptyDir": None,
                        "hostPath": {"path": str(compile_cache()), "type": "Directory"},
                    },
                },
            },
            self.operator_values,
            values,
        )
        self._helm_install(OPERATOR_RELEASE, OPERATOR_CHART, chosen)

    def install_serving(self, checkpoint: Path) -> None:
        chart = self.workdir / "serving-chart"
        shutil.rmtree(chart, ignore_errors=True)
        shutil.copytree(SERVING_CHART, chart)
        shutil.copytree(SIDECAR_CHART, chart / "charts" / "eplb-sidecar")
        config, workload = self.config, self.config.workload
        values = {
            "app": self.app,
            "workload": self.workload,
            "groups": [str(index) for index in range(self.groups)],
            "engine": {
                "ranks": config.ranks, "layers": config.layers, "experts": config.experts,
                "slotsPerRank": config.slots_per_rank, "hidden": config.hidden,
                "intermediate": config.intermediate, "topK": config.top_k,
                "seed": config.seed, "skew": str(workload.skew),
                "tokensPerStep": workload.tokens_per_step,
                "stepInterval": str(workload.step_interval),
                "tokensPerSecond": str(workload.tokens_per_second or ""),
                "port": ENGINE_PORT,
                "runAsUser": "" if self.engine_user is None else self.engine_user,
            },
            "checkpointDir": str(checkpoint),
            "faults": True,
            "eplb-sidecar": {
                "ranksPerPod": self.ranks_per_pod,
                "checkpointPath": CHECKPOINT_MOUNT,
                "extraEnv": [{"name": "EPLB_SIDECAR_FAULT_FILE",
                              "value": f"{FAULTS_MOUNT}/fault"}],
                "extraVolumeMounts": [
                    {"name": "checkpoint", "mountPath": CHECKPOINT_MOUNT, "readOnly": True},
                    {"name": "faults", "mountPath": FAULTS_MOUNT},
                ],
                # Many sidecars share two cores here: no requests the node would refuse.
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                # Ready as soon as it is: tests wait on it.
                "readinessProbe": {"periodSeconds": 1},
            },
        }  # fmt: skip
        chosen = _merge(values, self._transformers_values(), self.serving_values)
        self._helm_install(SERVING_RELEASE, chart, chosen)

    def _transformers_values(self) -> dict[str, Any]:
        if self.transformers is None:
            return {}
        dist = self.workdir / "dist"
        for group in range(self.groups):  # each group's engines meet in a file of their own
            (dist / str(group)).mkdir(parents=True, exist_ok=True)
            (dist / str(group)).chmod(0o777)
        dist.chmod(0o755)
        return {
            "engine": {
                "implementation": "transformers",
                "model": self.transformers.architecture,
                "dispatchBlock": self.transformers.dispatch_block,
            },
            "distDir": str(dist),
        }

    def _helm_install(self, release: str, chart: Path, values: dict[str, Any]) -> None:
        values_file = self.workdir / f"{release}-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        self.kube.helm_checked(
            "upgrade", "--install", release, str(chart), "--namespace", self.namespace,
            "-f", str(values_file),
        )  # fmt: skip

    def stop(self) -> None:
        """Delete the ExpertPlacements while the operator still runs (it removes its
        finalizer), uninstall both releases, delete the namespace; wait for its pods to go."""
        self.stop_host_processes()
        if self.operator and self.operator_pods():  # scaled to zero: nobody would finalize
            self.kube.kubectl("delete", "expertplacements", "--all", "-n", self.namespace,
                              "--wait=true", "--timeout=30s")  # fmt: skip
        api = self.kube.api_checked()
        for left in api.get(self.xpl).body.get("items", []):  # no operator ran to finalize it
            name = left["metadata"]["name"]
            api.merge(f"{self.xpl}/{name}", {"metadata": {"finalizers": None}})
        # No hooks: the operator's pre-delete hook (a Job that stands the operator down so it
        # takes its finalizers off) has nothing left to do here, and would cost a pod start.
        # No --wait: the namespace goes next, and with it whatever is still deleting.
        for release in (SERVING_RELEASE, OPERATOR_RELEASE):
            self.kube.helm("uninstall", release, "--namespace", self.namespace, "--no-hooks")
        self.kube.api_checked().delete(f"/api/v1/namespaces/{self.namespace}")
        # The next test gets its own namespace; the node stops these pods all the same.
        with contextlib.suppress(AssertionError):
            self.wait(lambda: not self._pod_objects(""), 60, "the namespace's pods to go")

    def stop_host_processes(self) -> None:
        """Stop what runs beside the cluster (Prometheus and its target discovery); enough
        when the whole cluster stops next, its node taking every pod with it."""
        if self._discovery is not None:
            self._discovery.stop()
            self._discovery = None
        if self.prometheus is not None:
            self.prometheus.stop()

    def settle(self, seconds: float) -> None:
        """Wait until the engines have served for ``seconds``."""
        time.sleep(max(0.0, self.started + seconds - time.monotonic()))

    # -- pods ----------------------------------------------------------------------------
    def _pod_objects(self, selector: str) -> list[dict[str, Any]]:
        reply = self.kube.api_checked().get(
            f"/api/v1/namespaces/{self.namespace}/pods", labelSelector=selector
        )
        return list(reply.body.get("items", [])) if reply.code == 200 else []

    def _ready(self, pod: dict[str, Any]) -> bool:
        conditions = (pod.get("status") or {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until every rank of every group (and the operator) is Ready."""
        expected = self.groups * self.config.ranks // self.ranks_per_pod

        def ready() -> bool:
            serving = [p for p in self._pod_objects(f"app={self.app}") if self._ready(p)]
            serving = [p for p in serving if "deletionTimestamp" not in p["metadata"]]
            if len(serving) != expected:
                return False
            return not self.operator or any(self._ready(p) for p in self.operator_pods())

        self.wait(ready, timeout, f"{expected} serving pods and the operator to be Ready")

    def pods(self, group: str | None = None) -> list[ServingPod]:
        """Serving pods (live ones), by group and rank."""
        group_label, index_label = (
            ("leaderworkerset.sigs.k8s.io/group-index", "leaderworkerset.sigs.k8s.io/worker-index")
            if self.workload == "LeaderWorkerSet"
            else ("eplb.io/group", "apps.kubernetes.io/pod-index")
        )
        selector = f"app={self.app}" + (f",{group_label}={group}" if group is not None else "")
        found = []
        for pod in self._pod_objects(selector):
            meta, status = pod["metadata"], pod.get("status") or {}
            if "deletionTimestamp" in meta or not status.get("podIP"):
                continue
            found.append(
                ServingPod(
                    name=meta["name"],
                    uid=meta["uid"],
                    group=meta["labels"][group_label],
                    rank=int(meta["labels"][index_label]),
                    ip=status["podIP"],
                    node_dir=self._node_dir(pod),
                    ranks_per_pod=self.ranks_per_pod,
                )
            )
        return sorted(found, key=lambda p: (p.group, p.rank))

    def pod(self, rank: int, group: str = "0") -> ServingPod:
        return next(p for p in self.pods(group) if p.rank == rank)

    def _node_dir(self, pod: dict[str, Any]) -> Path:
        meta = pod["metadata"]
        return self.kube.node_root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"

    def tables(self) -> list[ExpertTable]:
        """Every rank's expert table, of every serving replica (in rank order)."""
        return [ExpertTable.attach(path) for pod in self.pods() for path in pod.table_dirs]

    def probe(self, group: str = "0", tokens: int = 16, seed: int = 12345) -> torch.Tensor:
        """The group's outputs for fixed inputs: the reference engine's MoE outputs
        ``[L, T, H]`` (see engine.probe), a transformers model's logits ``[T, vocab]``."""
        body = ProbeRequest(tokens=tokens, seed=seed).model_dump_json().encode()
        if self.transformers is not None:
            return merge_logits([
                LogitsProbe.model_validate_json(_post(f"{pod.engine_url}/v1/probe", body))
                for pod in self.pods(group)
            ])  # fmt: skip
        parts = [
            ProbePart.model_validate_json(_post(f"{url}/v1/probe", body))
            for pod in self.pods(group)
            for url in pod.engine_urls
        ]
        return merge_probe_parts(parts)

    def set_workload(self, **changes: object) -> None:
        body = json.dumps(changes).encode()
        for pod in self.pods():
            for url in pod.engine_urls:
                _post(f"{url}/v1/workload", body)

    def service_account_token(
        self, account: str, audience: str = SIDECAR_AUDIENCE, seconds: int = 600
    ) -> str:
        """A token of ServiceAccount ``account`` of this namespace for ``audience``, from the
        TokenRequest API (what the kubelet projects into a pod that runs as it)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": seconds},
        }
        reply = self.kube.api_checked().checked(
            "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token", request
        )
        return str(reply["status"]["token"])

    def sidecar_token(self) -> str:
        """A token the sidecars accept: the operator's ServiceAccount's, for their audience."""
        return self.service_account_token(OPERATOR_ACCOUNT)

    def sidecar_info(self, pod_name: str) -> dict[str, Any]:
        """The sidecar's ``GET /v1/info``, asked as the operator asks it."""
        pod = next(p for p in self.pods() if p.name == pod_name)
        request = urllib.request.Request(
            f"http://{pod.ip}:{SIDECAR_CONTROL_PORT}/v1/info",
            headers={"Authorization": f"Bearer {self.sidecar_token()}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))

    # -- faults --------------------------------------------------------------------------
    def inject(self, pod: ServingPod, fault: str) -> None:
        """The sidecar of ``pod`` injects ``fault`` (see eplb_local.faults);
        an ``exit-…`` fault fires once, a ``delay-…`` one until :meth:`clear`."""
        pod.faults_file.write_text(fault)

    def clear(self, pod: ServingPod) -> None:
        pod.faults_file.unlink(missing_ok=True)

    def container_pid(self, pod_name: str, container: str) -> int | None:
        reply = self.kube.api_checked().get(f"/api/v1/namespaces/{self.namespace}/pods/{pod_name}")
        for status in (reply.body.get("status") or {}).get("containerStatuses", []):
            if status["name"] == container and "running" in status["state"]:
                return int(str(status.get("containerID", "local://0")).rsplit("/", 1)[-1])
        return None

    def restarts(self, pod_name: str, container: str) -> int:
        reply = self.kube.api_checked().get(f"/api/v1/namespaces/{self.namespace}/pods/{pod_name}")
        for status in (reply.body.get("status") or {}).get("containerStatuses", []):
            if status["name"] == container:
                return int(status.get("restartCount", 0))
        return 0

    def kill(self, pod_name: str, container: str = "eplb-sidecar") -> None:
        """SIGKILL a container's processes (a crash); the node restarts it, as a kubelet."""
        pid = self.container_pid(pod_name, container)
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)

    # -- the operator ---------------------------------------------------------------------
    def operator_pods(self) -> list[dict[str, Any]]:
        return self._pod_objects(
            f"app.kubernetes.io/name=eplb-operator,app.kubernetes.io/instance={OPERATOR_RELEASE}"
        )

    def operator_pod(self) -> dict[str, Any]:
        live = [p for p in self.operator_pods() if "deletionTimestamp" not in p["metadata"]]
        if not live:
            raise AssertionError("no operator pod")
        return live[0]

    def operator_log(self, pod_name: str | None = None) -> str:
        """The operator's output, every pod (or the pod ``pod_name``) and restart of it."""
        logs = []
        pattern = f"{pod_name}_*" if pod_name else f"{OPERATOR_RELEASE}-*"
        for directory in sorted(self.kube.node_root.glob(f"pods/{self.namespace}_{pattern}")):
            path = directory / "logs" / "operator.log"
            if path.exists():
                logs.append(path.read_text(errors="replace"))
        return "\n".join(logs)

    def operator_leader(self) -> str | None:
        """The operator pod holding the leader-election Lease (None: no Lease, or released)."""
        reply = self.kube.api_checked().get(
            f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{OPERATOR_LEASE}"
        )
        if reply.code != 200:
            return None
        return (reply.body.get("spec") or {}).get("holderIdentity") or None

    def operator_metrics(self, pod: dict[str, Any] | None = None) -> str:
        """``/metrics`` of ``pod`` (default: the first live operator pod)."""
        ip = (pod or self.operator_pod())["status"]["podIP"]
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as response:
            return str(response.read().decode())

    def scale_operator(self, replicas: int) -> None:
        """Scale the operator's Deployment (0: no operator), and wait until it is so."""
        self.kube.kubectl_checked(
            "scale", "deployment", "-n", self.namespace, "-l",
            f"app.kubernetes.io/instance={OPERATOR_RELEASE}", f"--replicas={replicas}",
        )  # fmt: skip
        if replicas == 0:
            self.wait(lambda: not self.operator_pods(), 60, "the operator to stop")
        else:
            self.wait(lambda: any(self._ready(p) for p in self.operator_pods()), 120,
                      "the operator to be Ready")  # fmt: skip

    def kill_operator(self) -> None:
        """SIGKILL the operator's process (a crash); the node restarts the container."""
        self.kill(self.operator_pod()["metadata"]["name"], "operator")

    # -- the API ----------------------------------------------------------------------------
    @property
    def xpl(self) -> str:
        return f"/apis/eplb.io/v1alpha1/namespaces/{self.namespace}/expertplacements"

    def placement(self, name: str | None = None) -> dict[str, Any]:
        """The ExpertPlacement ``name`` (default: the one named like the app)."""
        return dict(self.kube.api_checked().get(f"{self.xpl}/{name or self.app}").body)

    def status(self, name: str | None = None) -> dict[str, Any]:
        return dict(self.placement(name).get("status") or {})

    def condition(self, kind: str, name: str | None = None) -> dict[str, Any]:
        conditions = self.status(name).get("conditions", [])
        return next((c for c in conditions if c["type"] == kind), {})

    def events(self) -> list[dict[str, Any]]:
        reply = self.kube.api_checked().get(f"/api/v1/namespaces/{self.namespace}/events")
        return list(reply.body["items"])

    def revisions(self) -> list[dict[str, Any]]:
        """The operator's ControllerRevisions (not the StatefulSets' own), oldest first."""
        path = f"/apis/apps/v1/namespaces/{self.namespace}/controllerrevisions"
        items = self.kube.api_checked().get(path, labelSelector="eplb.io/placement").body["items"]
        return sorted(items, key=lambda r: int(r.get("revision", 0)))

    def wait(self, check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.25)
        raise AssertionError(
            f"timed out waiting for {what or check}\nplacements: {self._placements_brief()}\n"
            f"operator log tail:\n{self.operator_log()[-3000:]}"
        )

    def _placements_brief(self) -> str:
        """Each ExpertPlacement's uid, generation and status (what a timed-out wait saw)."""
        reply = self.kube.api_checked().get(self.xpl)
        return json.dumps([
            {"name": p["metadata"]["name"], "uid": p["metadata"]["uid"],
             "generation": p["metadata"].get("generation"),
             "finalizers": p["metadata"].get("finalizers"), "status": p.get("status")}
            for p in reply.body.get("items", [])
        ])  # fmt: skip


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge dicts, later ones winning (as helm merges -f files)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def _readable_by_all(directory: Path) -> None:
    """The sidecars run as another user: the checkpoint must be world-readable."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return bytes(response.read())


def compile_cache() -> Path:
    """The operator pods' numba cache, shared by every world of this machine (outside the
    checkout, like the binaries): a new operator pod (a test restarts it, a new world)
    loads the placement kernels instead of compiling them again, tens of seconds of CPU."""
    path = cache_root() / "numba"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o1777)  # the operator runs as an unprivileged user; sticky, like /tmp
    return path
