"""``StandinWorld``: a :class:`~eplb_local.world.World` whose serving replicas are stand-in
engines (``local/charts/standin-engines``) with the sidecar reading their own load output,
and helpers to watch them roll."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eplb_local.world import World
from eplb_local.world.kube import REPOSITORY
from eplb_local.world.world import SERVING_RELEASE, SIDECAR_CHART

STANDIN_CHART = REPOSITORY / "local" / "charts" / "standin-engines"
SOURCES = {"sglang": "sglang", "vllm": "vllm-stats", "trtllm": "trtllm"}
ENGINE_PORT = 8000


@dataclass
class StandinWorld(World):
    """``groups`` EP groups of ``ep_size`` ranks of stand-in ``engine``, one ``kind`` per group
    named ``moe-<group>``: a StatefulSet of a pod a rank, or a Deployment of one pod holding
    every rank — or one LeaderWorkerSet ``moe`` of a group per EP group, a pod a rank
    (``config.ranks`` is the pods of a group, what World waits for).  The
    ExpertPlacement ``placement_spec`` is applied with the serving chart, named like ``app``."""

    engine: str = "sglang"
    ep_size: int = 2
    kind: str = "StatefulSet"
    redundant: int = 4
    hidden_layers: int = 6
    first_moe_layer: int = 2
    experts: int = 16
    trtllm_iterations: str = "20-60"
    placement_spec: dict[str, Any] | None = None  # applied with the serving chart

    def placement_body(self) -> dict[str, Any]:
        return {"apiVersion": "eplb.io/v1alpha1", "kind": "ExpertPlacement",
                "metadata": {"name": self.app}, "spec": self.placement_spec}  # fmt: skip

    @property
    def layer_ids(self) -> list[int]:
        return list(range(self.first_moe_layer, self.hidden_layers))

    def install_serving(self, checkpoint: Path) -> None:
        if self.kind == "LeaderWorkerSet":
            self.kube.ensure_lws()
        chart = self.workdir / "standin-chart"
        shutil.rmtree(chart, ignore_errors=True)
        shutil.copytree(STANDIN_CHART, chart)
        shutil.copytree(SIDECAR_CHART, chart / "charts" / "eplb-sidecar")
        values: dict[str, Any] = {
            "app": self.app, "engine": self.engine, "kind": self.kind,
            "groups": [str(index) for index in range(self.groups)],
            "ranks": self.ep_size, "redundant": self.redundant, "port": ENGINE_PORT,
            "model": {"hiddenLayers": self.hidden_layers, "firstMoeLayer": self.first_moe_layer,
                      "experts": self.experts, "topK": 2, "tokensPerStep": 256,
                      "stepSeconds": "0.05", "skew": "1.2", "seed": 0},
            "eplb-sidecar": {
                "source": SOURCES[self.engine],
                "placement": {"name": self.app},
                "loadSource": {
                    "engineUrl": f"http://127.0.0.1:{ENGINE_PORT}",
                    "layerIds": f"{self.layer_ids[0]}-{self.layer_ids[-1]}",
                    "experts": self.experts, "pollSeconds": 1,
                    "trtllmIterRange": self.trtllm_iterations,
                    "vllmEplbConfig": {"num_redundant_experts": self.redundant},
                },
                # Many sidecars share two cores here: no requests the node would refuse.
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                "readinessProbe": {"periodSeconds": 1, "httpGet": {"path": "/healthz",
                                                                   "port": "eplb-metrics"}},
            },
        }  # fmt: skip
        self._helm_install(SERVING_RELEASE, chart, values)
        if self.placement_spec is not None:
            # The pods wait for its start-up file: the operator makes it for the placement.
            self.kube.api_checked().checked("POST", self.xpl, self.placement_body())

    # -- watching the groups ---------------------------------------------------------------
    def group_pods(self) -> dict[str, list[dict[str, Any]]]:
        """Live pods (not terminating) by EP group."""
        found: dict[str, list[dict[str, Any]]] = {str(g): [] for g in range(self.groups)}
        label = (
            "leaderworkerset.sigs.k8s.io/group-index"
            if self.kind == "LeaderWorkerSet"
            else "eplb.io/group"
        )
        for pod in self._pod_objects(f"app={self.app}"):
            if "deletionTimestamp" not in pod["metadata"]:
                found.setdefault(pod["metadata"]["labels"][label], []).append(pod)
        return found

    def ready_by_group(self) -> dict[str, int]:
        """Ready pods of each EP group, now."""
        return {group: sum(self._ready(pod) for pod in pods)
                for group, pods in self.group_pods().items()}  # fmt: skip

    def served_revisions(self) -> dict[str, set[str]]:
        """The placement revisions (pod annotation) each group's live pods started with."""
        return {
            group: {(pod["metadata"].get("annotations") or {}).get(
                "eplb.io/placement-revision", "0") for pod in pods}
            for group, pods in self.group_pods().items()
        }  # fmt: skip

    def mounted_file(self, pod: dict[str, Any], key: str) -> str:
        """The start-up file the node mounted into ``pod`` (its eplb-placement volume)."""
        return (self._node_dir(pod) / "volumes" / "eplb-placement" / key).read_text()

    def container_log(self, pod: dict[str, Any], container: str) -> str:
        path = self._node_dir(pod) / "logs" / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""
