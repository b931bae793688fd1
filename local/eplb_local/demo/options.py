"""What a demo runs: sizes, timing, Prometheus and fault, checked before anything starts.

Pure: the engine configuration and the ExpertPlacement a demo applies are derived here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from eplb_core.errors import InvalidInputError
from eplb_sidecar.engine.config import EngineConfig, Workload

NAMESPACE = "eplb-demo"
APP = "sandbox-moe"
NAME = "sandbox"
MAX_PODS = 16  # two processes each on a laptop's cores


class PrometheusMode(str, Enum):
    auto = "auto"  # the real one when the binary is on PATH, else scrape the sidecars
    on = "on"
    off = "off"


class Engine(str, Enum):
    reference = "reference"  # the project's reference MoE engine
    transformers = "transformers"  # a Hugging Face MoE model (eplb_sidecar.adapters)


class ServingWorkload(str, Enum):
    """What makes the serving pods (and says each pod's index)."""

    statefulset = "StatefulSet"  # its ordinal
    leaderworkerset = "LeaderWorkerSet"  # a group of it; the worker index (LWS controller)


class Model(str, Enum):
    mixtral = "mixtral"
    qwen3_moe = "qwen3-moe"
    deepseek_v3 = "deepseek-v3"


TOP_K = {Model.mixtral: 2, Model.qwen3_moe: 4, Model.deepseek_v3: 4}


class Fault(str, Enum):
    kill_sidecar_at_prepare = "kill-sidecar-at-prepare"
    kill_sidecar_at_commit = "kill-sidecar-at-commit"
    slow_pod = "slow-pod"
    restart_operator_mid_rollout = "restart-operator-mid-rollout"
    prometheus_down = "prometheus-down"


@dataclass(frozen=True)
class DemoOptions:
    pods: int = 4
    layers: int = 8
    experts: int = 16
    redundant: int = 4
    duration: int = 10
    prometheus: PrometheusMode = PrometheusMode.auto
    fault: Fault | None = None
    shift: bool = True
    skew: float = 1.4
    seed: int = 0
    engine: Engine = Engine.reference
    model: Model | None = None
    ranks_per_pod: int = 1
    workload: ServingWorkload = ServingWorkload.statefulset

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise InvalidInputError(problem)

    def problem(self) -> str | None:
        if not 1 <= self.ranks_per_pod <= 8:
            return f"--ranks-per-pod must be 1..8 (got {self.ranks_per_pod})"
        if not 2 <= self.pods <= MAX_PODS:
            return f"--pods must be 2..{MAX_PODS} (got {self.pods}): weights move between pods"
        if self.ranks_per_pod > 1 and self.engine is Engine.transformers:
            return "--ranks-per-pod runs the reference engine only"
        if self.workload is ServingWorkload.leaderworkerset and self.engine is Engine.transformers:
            return "--workload LeaderWorkerSet runs the reference engine only"
        if not 1 <= self.layers <= 64:
            return f"--layers must be 1..64 (got {self.layers})"
        if self.experts < 2:
            return f"--experts must be at least 2 (got {self.experts})"
        if self.redundant < 0:
            return f"--redundant must be 0 or more (got {self.redundant})"
        slots = self.experts + self.redundant
        if slots % self.ranks:
            fit = (-self.experts) % self.ranks
            return (
                f"--experts + --redundant ({slots}) must be a multiple of the ranks "
                f"({self.ranks}: --pods x --ranks-per-pod): every rank holds as many slots "
                f"(e.g. --redundant {fit or self.ranks})"
            )
        if not 10 <= self.duration <= 600:
            return (
                f"--duration must be 10..600 seconds (got {self.duration}): it is the "
                "operator's load window, and the API allows no shorter one"
            )
        if not 0 <= self.skew <= 4:
            return f"skew must be 0..4 (got {self.skew})"
        if (self.engine is Engine.transformers) != (self.model is not None):
            return "--model names the architecture of --engine transformers (and only of it)"
        return None

    @property
    def rank_from(self) -> str:
        """``spec.pods.rankFrom`` for the workload."""
        if self.workload is ServingWorkload.leaderworkerset:
            return "LeaderWorkerSet"
        return "StatefulSetOrdinal"

    @property
    def ranks(self) -> int:
        """EP ranks: ``ranks_per_pod`` in each pod."""
        return self.pods * self.ranks_per_pod

    @property
    def slots_per_rank(self) -> int:
        return (self.experts + self.redundant) // self.ranks

    @property
    def window_seconds(self) -> int:
        return self.duration

    @property
    def interval_seconds(self) -> int:
        """With a shift, twice the window: a shift made right after a rollout is then
        measured by the next pass's window alone, not half and half."""
        return 2 * self.duration if self.shift else self.duration

    @property
    def barrier_timeout_seconds(self) -> int:
        return 5

    def engine_config(self) -> EngineConfig:
        real_model = self.model is not None  # attention heads of 16, a router per layer
        return EngineConfig(
            ranks=self.ranks,
            layers=self.layers,
            experts=self.experts,
            slots_per_rank=self.slots_per_rank,
            hidden=64 if real_model else 32,
            intermediate=32 if real_model else 16,
            top_k=TOP_K[self.model] if self.model is not None else 2,
            seed=self.seed,
            # A fixed token rate per engine: ranks sharing a busy machine still serve alike.
            # Ten steps a second: each step's cost hardly depends on its size, and the demo's
            # engines share the user's machine with the control plane.
            workload=Workload(
                skew=self.skew, tokens_per_step=128, step_interval=0.1, tokens_per_second=4000
            ),
        )


def placement_manifest(
    options: DemoOptions, prometheus_url: str | None, layers_per_step: int = 2
) -> dict[str, Any]:
    """The ExpertPlacement the demo applies (examples/sandbox.yaml at the default sizes)."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": APP}},
        # The StatefulSet (the LeaderWorkerSet's group) is the EP group, its ordinal (the
        # worker index) the pod's index: pod i hosts ranks i*ranksPerPod … (i+1)*ranksPerPod-1.
        "pods": {"rankFrom": options.rank_from, "ranksPerPod": options.ranks_per_pod},
        "model": {"name": "sandbox/reference-moe", "layers": options.layers,
                  "experts": options.experts},
        "topology": {"ranks": options.ranks, "redundantExperts": options.redundant},
        "online": {"intervalSeconds": options.interval_seconds,
                   "windowSeconds": options.window_seconds, "minGainPermille": 5},
        "rollout": {"layersPerStep": layers_per_step,
                    "barrierTimeoutSeconds": options.barrier_timeout_seconds},
    }  # fmt: skip
    if prometheus_url is not None:
        spec["metrics"] = {"prometheusUrl": prometheus_url}
    return {
        "apiVersion": "eplb.io/v1alpha1",
        "kind": "ExpertPlacement",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": spec,
    }
