"""A demo's world: a real local cluster, the operator from its chart, the serving pods,
Prometheus, and their end.

``LocalKube`` starts etcd, kube-apiserver, kube-controller-manager and the node agent;
``World`` installs the operator with ``helm install`` of charts/eplb-operator and the serving
replica as a StatefulSet of the reference engine with the sidecar injected by the
eplb-sidecar chart. Everything stops in reverse order on exit, error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from eplb_core.errors import InvalidInputError
from eplb_local.demo.options import APP, NAMESPACE, DemoOptions, Fault
from eplb_local.demo.options import PrometheusMode as Mode
from eplb_local.engine.verify import group_errors
from eplb_local.kube.api import Api
from eplb_local.world import LocalKube, ServingPod, World
from eplb_local.world.warm import warm_compile_cache
from eplb_sidecar.adapters.transformers.options import TransformersOptions
from eplb_sidecar.contract.table import ExpertTable

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


def sidecar_faults(options: DemoOptions) -> dict[int, str]:
    """The fault each rank's sidecar injects for ``options.fault``, by rank."""
    fault = options.fault
    if fault is Fault.kill_sidecar_at_prepare:
        return {VICTIM_RANK: "exit-at-prepare"}
    if fault is Fault.kill_sidecar_at_commit:
        return {VICTIM_RANK: "exit-at-commit"}
    if fault is Fault.slow_pod:
        return {VICTIM_RANK: f"delay-prepare={options.barrier_timeout_seconds + 3}"}
    if fault is Fault.restart_operator_mid_rollout:
        # Every prepare takes a moment, so the rollout lasts long enough to be interrupted.
        return {rank: "delay-prepare=0.4" for rank in range(options.pods)}
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
        self.kube = LocalKube(workdir / "cluster")
        self.world: World | None = None
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
            for child in ("cluster", "world"):
                shutil.rmtree(self.workdir / child, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The operator pod's placement kernels (numba), compiled into its shared compile
        # cache while the cluster starts, as a PVC-backed compileCache holds them on a
        # cluster: else its first pass compiles them, minutes on a busy 2-core machine, and
        # only loads them on later runs.
        compiling = self._stack.enter_context(ThreadPoolExecutor(1))
        warming = compiling.submit(warm_compile_cache)
        self.say("starting a Kubernetes control plane (etcd, kube-apiserver, "
                 "kube-controller-manager) and the local node; compiling the operator's "
                 "placement kernels (once a checkout)")  # fmt: skip
        self._stack.enter_context(self.kube)
        assert self.kube.plane is not None
        self.say(f"Kubernetes API on {self.kube.plane.url}; KUBECONFIG={self.kube.kubeconfig}")
        model = self.options.model
        self.world = World(
            self.kube, NAMESPACE, self.workdir / "world", self.config, app=APP,
            with_prometheus=self.use_prometheus, ranks_per_pod=self.options.ranks_per_pod,
            workload=self.options.workload.value,
            transformers=TransformersOptions(architecture=model.value) if model else None,
        )  # fmt: skip
        # The whole cluster stops after the demo, its node with every pod: no graceful
        # uninstall first (it only made the demo's end 15 s slower).
        self._stack.callback(self.world.stop_host_processes)
        warming.result()
        engine = f"{model.value} (transformers)" if model else "the reference engine"
        self.say(f"helm install: the operator (charts/eplb-operator) and {self.options.pods} "
                 f"pods of {engine} with the injected sidecar")  # fmt: skip
        self.world.start()
        self.tables = self.world.tables()  # every rank's, in rank order
        for rank, fault in sidecar_faults(self.options).items():
            self.world.inject(self.world.pod(rank), fault)
        if self.world.prometheus is not None:
            self.say(f"Prometheus on {self.world.prometheus.url} finds the sidecars through the "
                     "API server and scrapes them every 250 ms")  # fmt: skip
        else:
            self.say("no Prometheus: the operator scrapes the sidecars' /metrics itself")
        operator = self.world.operator_pod()["metadata"]["name"]
        self.say(f"operator pod {operator} is Ready (kopf, the chart's ServiceAccount and RBAC)")

    # -- what the demo reads and does -----------------------------------------------------
    @property
    def serving(self) -> World:
        assert self.world is not None, "the demo world is not started"
        return self.world

    @property
    def api(self) -> Api:
        return self.kube.api_checked()

    def victim(self) -> ServingPod:
        return self.serving.pod(VICTIM_RANK)

    def sidecar_restarts(self) -> int:
        return sum(self.serving.restarts(pod.name, "eplb-sidecar") for pod in self.serving.pods())

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
