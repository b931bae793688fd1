"""One pod on the local node: its volumes, its containers as processes, its status.

``PodRuntime.tick()`` is the kubelet's pod worker in one step: set the pod's sysctls in its
network namespace (the sandbox's part), prepare volumes, run init containers in order,
start (and restart, with back-off) the app containers, run probes, and, once the pod is
being deleted, stop everything within its grace period.
``status()`` is the Pod status the agent writes.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eplb_local.kube.api import Api
from eplb_local.node.events import record_event
from eplb_local.node.images import local_image
from eplb_local.node.probes import ProbeState, now, probe_once
from eplb_local.node.spec import ContainerConfigError, ContainerPlan, plan_container
from eplb_local.node.sysctls import pod_sysctls, write_in_netns
from eplb_local.node.volumes import PodVolumes, VolumeBuilder, memory_dir

BACKOFF_START = 1.0  # seconds; the kubelet starts at 10 (a test waits for less)
BACKOFF_MAX = 60.0
SANDBOX_RETRY_SECONDS = 10.0  # after the kernel refused a sysctl's value


def rfc3339(at: datetime.datetime | None = None) -> str:
    at = at or datetime.datetime.now(datetime.timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool
    plan: ContainerPlan | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    not_before: float = 0.0
    backoff: float = BACKOFF_START
    waiting: tuple[str, str] = ("ContainerCreating", "")
    last_state: dict[str, Any] = field(default_factory=dict)
    terminated: dict[str, Any] | None = None  # after a run that will not be restarted
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    startup: ProbeState | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def started(self) -> bool:
        return self.running and (self.startup is None or self.startup.passing)

    @property
    def ready(self) -> bool:
        if not self.started:
            return False
        return self.readiness is None or self.readiness.passing


class PodRuntime:
    def __init__(
        self,
        api: Api,
        pod: dict[str, Any],
        pod_dir: Path,
        ip: str,
        netns: str,
        service_env: dict[str, str],
        keep_paths: list[str],
        probes: ThreadPoolExecutor,
    ) -> None:
        self.api = api
        self.pod = pod
        self.dir = pod_dir
        self.ip = ip
        self.netns = netns
        self.host_ip = service_env["KUBERNETES_SERVICE_HOST"]
        self.service_env = service_env
        self.keep_paths = keep_paths
        self.probe_pool = probes
        self.volumes: PodVolumes | None = None
        self.volume_error = ""
        self.created = rfc3339()
        spec = pod["spec"]
        self.containers = [Container(c, init=True) for c in spec.get("initContainers", [])] + [
            Container(c, init=False) for c in spec.get("containers", [])
        ]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.stop_deadline: float | None = None
        self.pending_probes: list[tuple[Container, ProbeState, Future[bool]]] = []
        # Admitted sysctls (agent: forbidden ones never get here), set before any container.
        self.sysctls = pod_sysctls(pod)
        self.sandbox_ready = not self.sysctls
        self.sandbox_error = ""
        self.sandbox_retry_at = 0.0

    # -- identity ------------------------------------------------------------------------
    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def owner_uid(self) -> int | None:
        """The one user every container runs as, when they all share one."""
        users = {c.plan.uid for c in self.containers if c.plan is not None}
        return users.pop() if len(users) == 1 else None

    def with_ip(self) -> dict[str, Any]:
        """The pod as its downward API sees it (podIP known before it is reported)."""
        pod = dict(self.pod)
        pod["status"] = dict(pod.get("status") or {}, podIP=self.ip, hostIP=self.host_ip,
                             podIPs=[{"ip": self.ip}])  # fmt: skip
        return pod

    # -- the worker step -------------------------------------------------------------------
    def tick(self) -> None:
        self._collect_probes()
        if self.stop_deadline is not None:
            self._stopping()
            return
        if not self._sandbox_ready():
            return
        if not self._plans_ready():
            return
        if self.volumes is not None and now() > self.volumes.refresh_due:
            VolumeBuilder(self.api).refresh(self.with_ip(), self.volumes, self.owner_uid)
        for container in self.containers:
            if container.init and not self._init_done(container):
                self._run(container)
                if not self._init_done(container) and not _is_restartable_init(container):
                    return  # init containers run one after another
        for container in self.containers:
            if not container.init:
                self._run(container)
        self._schedule_probes()

    def _sandbox_ready(self) -> bool:
        """The pod's sysctls written in its network namespace, once, before any container
        starts (runc sets them on the pod sandbox). A value the kernel refuses leaves the
        pod waiting (ContainerCreating, a FailedCreatePodSandBox Event), retried later."""
        if self.sandbox_ready:
            return True
        if now() < self.sandbox_retry_at:
            return False
        try:
            write_in_netns(self.netns, self.sysctls)
        except OSError as error:
            message = f"Failed to create pod sandbox: {error}"
            if message != self.sandbox_error:
                record_event(self.api, self.pod, "Warning", "FailedCreatePodSandBox", message)
            self.sandbox_error = message
            self.sandbox_retry_at = now() + SANDBOX_RETRY_SECONDS
            for container in self.containers:
                container.waiting = ("ContainerCreating", message)
            return False
        self.sandbox_ready = True
        self.sandbox_error = ""
        return True

    def _plans_ready(self) -> bool:
        try:
            pod = self.with_ip()
            for container in self.containers:
                if container.plan is None:
                    container.plan = plan_container(
                        pod, container.spec, self._lookup, self._lookup_all, self.service_env,
                    )  # fmt: skip
            if self.volumes is None:
                self.volumes = VolumeBuilder(self.api).build(pod, self.dir, self.owner_uid)
            self.volume_error = ""
            return True
        except ContainerConfigError as error:
            self.volume_error = str(error)
            for container in self.containers:
                container.waiting = ("CreateContainerConfigError", str(error))
            return False

    def _lookup(self, kind: str, name: str, key: str) -> str | None:
        data = self._lookup_all(kind, name)
        return None if data is None else data.get(key)

    def _lookup_all(self, kind: str, name: str) -> dict[str, str] | None:
        import base64

        namespace = self.pod["metadata"]["namespace"]
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        reply = self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if reply.code != 200:
            return None
        data = reply.body.get("data") or {}
        if kind == "Secret":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return dict(data)

    def _init_done(self, container: Container) -> bool:
        if _is_restartable_init(container):
            return container.started
        return container.terminated is not None and container.terminated["exitCode"] == 0

    def _run(self, container: Container) -> None:
        """Start the container if it is due; account for an exit."""
        if container.process is not None and container.process.poll() is not None:
            self._exited(container)
        if container.process is not None or container.terminated is not None:
            return
        if now() < container.not_before:
            return
        self._start(container)

    def _exited(self, container: Container) -> None:
        assert container.process is not None
        code = container.process.returncode
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal
        state = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": container.started_at,
            "finishedAt": rfc3339(),
            "containerID": f"local://{container.process.pid}",
        }
        container.process = None
        container.readiness = container.liveness = container.startup = None
        restart = (
            self.restart_policy == "Always"
            or (self.restart_policy == "OnFailure" and code != 0)
            or _is_restartable_init(container)
        )
        if container.init and not _is_restartable_init(container) and code == 0:
            restart = False
        if restart:
            container.last_state = {"terminated": state}
            container.restarts += 1
            container.not_before = now() + container.backoff
            container.waiting = ("CrashLoopBackOff", f"back-off {container.backoff:.0f}s "
                                 f"restarting failed container={container.name}")  # fmt: skip
            container.backoff = min(BACKOFF_MAX, container.backoff * 2)
        else:
            container.terminated = state

    def _start(self, container: Container) -> None:
        plan = container.plan
        assert plan is not None and self.volumes is not None
        mounts = []
        for mount in plan.mounts:
            if mount.volume not in self.volumes.paths:
                container.waiting = ("CreateContainerConfigError", f"no volume {mount.volume}")
                return
            source = self.volumes.paths[mount.volume]
            if mount.sub_path:
                source = source / mount.sub_path
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append({"source": str(source), "target": mount.target,
                           "readOnly": mount.read_only})  # fmt: skip
        mounts.extend(self._image_accounts(container))
        mounts.append(
            {"source": str(self._hosts_file()), "target": "/etc/hosts", "readOnly": False}
        )
        context = container.spec.get("securityContext") or {}
        launch = {
            "argv": plan.argv,
            "env": plan.env,
            "mounts": mounts,
            "keep": self.keep_paths,
            "uid": plan.uid,
            "gid": plan.gid,
            "groups": plan.groups,
            "workingDir": plan.working_dir,
            "readOnlyRoot": bool(context.get("readOnlyRootFilesystem")),
            "netns": self.netns,
            "hostname": self.hostname,
        }
        plan_file = self.dir / f"{container.name}.launch.json"
        plan_file.touch(mode=0o600, exist_ok=True)
        plan_file.write_text(json.dumps(launch))
        log = self.log_path(container.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            container.process = subprocess.Popen(
                [sys.executable, "-m", "eplb_local.node.enter", str(plan_file)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: a stop reaches its children
            )  # fmt: skip
        container.started_at = rfc3339()
        container.waiting = ("", "")
        started = now()
        if plan.startup:
            container.startup = ProbeState.starting(plan.startup, started)
        if plan.readiness:
            container.readiness = ProbeState.starting(plan.readiness, started)
        if plan.liveness:
            container.liveness = ProbeState.starting(plan.liveness, started)

    @property
    def hostname(self) -> str:
        return str(self.pod["spec"].get("hostname") or self.pod["metadata"]["name"])[:63]

    def _hosts_file(self) -> Path:
        """The pod's /etc/hosts, as the kubelet writes it, plus the names of the API
        server's Service (the local node has no cluster DNS; this is the one name pods
        need: in-cluster clients such as kopf go to https://kubernetes.default.svc)."""
        path = self.dir / "hosts"
        if not path.exists():
            names = "kubernetes kubernetes.default kubernetes.default.svc"
            path.write_text(
                "# Kubernetes-managed hosts file (eplb local node).\n"
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"{self.ip}\t{self.hostname}\n"
                f"{self.host_ip}\t{names} kubernetes.default.svc.cluster.local\n"
            )
            path.chmod(0o644)
        return path

    def _image_accounts(self, container: Container) -> list[dict[str, Any]]:
        """/etc/passwd and /etc/group as the image has them: this machine's plus its user."""
        image = local_image(container.spec.get("image", ""))
        if image is None:
            return []
        mounts = []
        for name, line in (("passwd", image.passwd_line()), ("group", image.group_line())):
            path = self.dir / f"{container.name}.{name}"
            path.write_text(Path(f"/etc/{name}").read_text() + line)
            path.chmod(0o644)
            mounts.append({"source": str(path), "target": f"/etc/{name}", "readOnly": True})
        return mounts

    def log_path(self, container: str) -> Path:
        return self.dir / "logs" / f"{container}.log"

    # -- probes ----------------------------------------------------------------------------
    def _schedule_probes(self) -> None:
        moment = now()
        for container in self.containers:
            if not container.running or container.plan is None:
                continue
            probes = [container.startup] if container.startup and not container.startup.passing \
                else [container.readiness, container.liveness]  # fmt: skip
            for probe in probes:
                if probe is None or probe.running or moment < probe.next_at:
                    continue
                probe.running = True
                future = self.probe_pool.submit(
                    probe_once, probe.spec, self.ip, container.plan.ports,
                    functools.partial(self._exec, container),
                )  # fmt: skip
                self.pending_probes.append((container, probe, future))

    def _collect_probes(self) -> None:
        still = []
        for container, probe, future in self.pending_probes:
            if not future.done():
                still.append((container, probe, future))
                continue
            probe.record(bool(future.result()), now())
            if probe is not container.readiness and probe.failed_out and container.running:
                self._signal(container, signal.SIGKILL)  # liveness/startup failed: restart
        self.pending_probes = still

    def _exec(self, container: Container, argv: list[str], timeout: float) -> int:
        """An exec probe: the command in a fresh namespace with the container's mounts."""
        plan_file = self.dir / f"{container.name}.launch.json"
        launch = json.loads(plan_file.read_text())
        launch["argv"] = argv
        probe_file = self.dir / f"{container.name}.probe.json"
        probe_file.touch(mode=0o600, exist_ok=True)
        probe_file.write_text(json.dumps(launch))
        result = subprocess.run(
            [sys.executable, "-m", "eplb_local.node.enter", str(probe_file)],
            capture_output=True, timeout=timeout, check=False,
        )  # fmt: skip
        return result.returncode

    # -- stopping --------------------------------------------------------------------------
    def begin_stop(self, grace_seconds: float) -> None:
        if self.stop_deadline is not None:
            return
        self.stop_deadline = now() + grace_seconds
        for container in self.containers:
            self._signal(container, signal.SIGTERM)

    def _stopping(self) -> None:
        assert self.stop_deadline is not None
        if now() >= self.stop_deadline:
            for container in self.containers:
                self._signal(container, signal.SIGKILL)

    @property
    def stopped(self) -> bool:
        return all(not c.running for c in self.containers)

    def kill_all(self) -> None:
        for container in self.containers:
            self._signal(container, signal.SIGKILL)
            if container.process is not None:
                container.process.wait(10)

    def cleanup(self) -> None:
        shutil.rmtree(memory_dir(self.uid), ignore_errors=True)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)

    @staticmethod
    def _signal(container: Container, which: signal.Signals) -> None:
        if container.running:
            assert container.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, which)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        app = [c for c in self.containers if not c.init]
        inits = [c for c in self.containers if c.init]
        initialized = all(self._init_done(c) for c in inits)
        all_ready = initialized and all(c.ready for c in app)
        finished = [c.terminated for c in app if c.terminated is not None]
        if app and len(finished) == len(app):
            phase = "Succeeded" if all(t["exitCode"] == 0 for t in finished) else "Failed"
        elif any(c.running for c in app) or any(c.restarts for c in app):
            phase = "Running"
        else:
            phase = "Pending"

        def condition(kind: str, ok: bool) -> dict[str, Any]:
            return {"type": kind, "status": "True" if ok else "False"}

        return {
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.created,
            "conditions": [
                condition(
                    "PodReadyToStartContainers", self.sandbox_ready and self.volumes is not None
                ),
                condition("Initialized", initialized),
                condition("ContainersReady", all_ready),
                condition("Ready", all_ready),
                condition("PodScheduled", True),
            ],
            "initContainerStatuses": [_container_status(c) for c in inits] or None,
            "containerStatuses": [_container_status(c) for c in app],
        }


def _is_restartable_init(container: Container) -> bool:
    return container.init and container.spec.get("restartPolicy") == "Always"


def _container_status(container: Container) -> dict[str, Any]:
    state: dict[str, Any]
    if container.running:
        state = {"running": {"startedAt": container.started_at}}
    elif container.terminated is not None:
        state = {"terminated": container.terminated}
    else:
        reason, message = container.waiting
        state = {"waiting": {"reason": reason or "ContainerCreating", "message": message}}
    status: dict[str, Any] = {
        "name": container.name,
        "image": container.spec.get("image", ""),
        "imageID": "",
        "ready": container.ready,
        "started": container.started,
        "restartCount": container.restarts,
        "state": state,
        "lastState": container.last_state,
    }
    if container.process is not None:
        status["containerID"] = f"local://{container.process.pid}"
    return status
