"""A demo's processes: the local API, the pods, Prometheus and the operator, and their end.

Everything is a child process started here and stopped in reverse order on exit, error or
Ctrl-C (:class:`contextlib.ExitStack`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from eplb_operator.demo.options import APP, NAMESPACE, TOKEN_SECRET, DemoOptions, Fault
from eplb_operator.demo.options import PrometheusMode as Mode
from eplb_operator.errors import InvalidInputError
from eplb_operator.sandbox.api import Api
from eplb_operator.sandbox.cluster_process import ClusterProcess
from eplb_operator.sandbox.kubelet import Kubelet
from eplb_operator.sandbox.operator_process import OperatorProcess
from eplb_operator.sandbox.pods import publish_group, publish_token
from eplb_operator.sandbox.prometheus import LocalPrometheus, Target
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.verify import group_errors
from eplb_sidecar.launch import LocalGroup
from eplb_sidecar.server import FAULT_ENV

VICTIM_RANK = 1  # the pod a fault hits


def prometheus_wanted(mode: Mode, fault: Fault | None) -> bool:
    """Whether to run the real Prometheus; InvalidInputError when it is needed but missing."""
    found = shutil.which("prometheus") is not None
    if mode is Mode.on and not found:
        raise InvalidInputError(
            "--prometheus on: no 'prometheus' binary on PATH (Debian/Ubuntu: apt-get install "
            "prometheus; scripts/setup.sh does)"
        )
    if fault is Fault.prometheus_down and (mode is Mode.off or not found):
        raise InvalidInputError(
            "--fault prometheus-down needs the real Prometheus (--prometheus auto or on, and the "
            "'prometheus' binary on PATH)"
        )
    return mode is Mode.on or (mode is Mode.auto and found)


def sidecar_faults(options: DemoOptions) -> dict[int, dict[str, str]]:
    """``EPLB_SIDECAR_FAULT`` of each rank's first sidecar for ``options.fault``."""
    fault, env = options.fault, FAULT_ENV
    if fault is Fault.kill_sidecar_at_prepare:
        return {VICTIM_RANK: {env: "exit-at-prepare"}}
    if fault is Fault.kill_sidecar_at_commit:
        return {VICTIM_RANK: {env: "exit-at-commit"}}
    if fault is Fault.slow_pod:
        return {VICTIM_RANK: {env: f"delay-prepare={options.barrier_timeout_seconds + 3}"}}
    if fault is Fault.restart_operator_mid_rollout:
        # Every prepare takes a moment, so the rollout lasts long enough to be interrupted.
        return {rank: {env: "delay-prepare=0.4"} for rank in range(options.pods)}
    return {}


class DemoWorld:
    def __init__(
        self, options: DemoOptions, workdir: Path, say: Callable[[str], None] = lambda _: None
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.say = say
        self.config = options.engine_config()
        self.use_prometheus = prometheus_wanted(options.prometheus, options.fault)
        self.cluster = ClusterProcess(workdir / "cluster")
        self.group = LocalGroup(
            self.config, workdir / "pods", checkpoint=workdir / "checkpoint",
            sidecar_env=sidecar_faults(options),
        )  # fmt: skip
        self.kubelet = Kubelet(self.group)
        self.prometheus: LocalPrometheus | None = None
        self.operator: OperatorProcess | None = None
        self.api = Api("")
        self.tables: list[ExpertTable] = []
        self._stack = contextlib.ExitStack()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> DemoWorld:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        if self.workdir.exists():  # a previous demo's files: its processes are gone
            for child in ("cluster", "pods", "operator", "prometheus", "checkpoint"):
                shutil.rmtree(self.workdir / child, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_checkpoint(self.workdir / "checkpoint", self.config)
        self._stack.callback(self.cluster.stop)
        self.cluster.spawn()  # boots while the pods start
        self.say(f"starting {self.options.pods} pods (reference engine + sidecar each)")
        self._stack.callback(self.group.stop)
        self.group.start()
        self.tables = [ExpertTable.attach(pod.table_dir) for pod in self.group.pods]
        self._stack.callback(self.kubelet.stop)
        self.kubelet.start()
        url = self.cluster.wait_ready()
        self.api = Api(url)
        self.say(f"Kubernetes API (KMock) on {url}")
        publish_group(url, NAMESPACE, self.group, APP)
        publish_token(url, NAMESPACE, TOKEN_SECRET, self.group.token)
        if self.use_prometheus:
            targets = [Target(f"127.0.0.1:{pod.metrics_port}", NAMESPACE, pod.name)
                       for pod in self.group.pods]  # fmt: skip
            # Scrapes much finer than the window: increase() extrapolates each target from its
            # own scrape phase, a bias of up to interval/window per pod.
            self.prometheus = LocalPrometheus(
                self.workdir / "prometheus", targets, scrape_interval="250ms"
            )
            self._stack.callback(self.prometheus.stop)
            self.prometheus.start()
            self.say(f"Prometheus on {self.prometheus.url} scrapes the sidecars every 250 ms")
        else:
            self.say("no Prometheus: the operator scrapes the sidecars' /metrics itself")
        self.operator = OperatorProcess(self.cluster.kubeconfig, self.workdir / "operator")
        self._stack.callback(self._stop_operator)
        self.operator.start()
        pid = self.operator.process.pid if self.operator.process else "?"
        self.say(f"operator started (kopf, pid {pid})")

    def _stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    # -- what the demo reads ---------------------------------------------------------------
    def group_load(self) -> torch.Tensor:
        """``[L, R]`` int64: tokens each rank received so far, over the whole group's stream
        (every engine counts where its own tokens went, as EP's all-to-all sends them)."""
        return torch.stack([table.group_load.clone() for table in self.tables]).sum(dim=0)

    def errors(self) -> list[str]:
        """DESIGN.md §5 on the pods now: one placement, every expert replicated, exact weights."""
        return group_errors(self.tables, self.config.seed)

    def placement(self) -> torch.Tensor:
        """``[L, P]``: what rank 0 serves."""
        return self.tables[0].routing.clone()
