"""Restart rollouts end to end: stand-in engines (SGLang, vLLM, TensorRT-LLM) that read their
start-up file from the operator's ConfigMap and write load in their engine's format, the
sidecar reading it (``--source``), the operator restarting one EP group at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from eplb_local.standin.world import StandinWorld
from eplb_local.world import LocalKube
from eplb_sidecar.engine.config import EngineConfig

APP = "moe"
GROUPS = 2
RANKS = 2
LAYER_IDS = [2, 3, 4, 5]  # a model of 6 hidden layers, the first 2 dense
EXPERTS = 16
REDUNDANT = 4


def restart_spec(engine: str, kind: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": APP}},
        "model": {"layers": len(LAYER_IDS), "experts": EXPERTS, "layerIds": LAYER_IDS,
                  "hiddenLayers": 6},
        "topology": {"ranks": RANKS, "redundantExperts": REDUNDANT},
        "engine": engine,
        "workloadRef": {"kind": kind, "name": "moe-{group}"},
        "online": {"intervalSeconds": 10, "windowSeconds": 10},
        "rollout": {"strategy": "Restart", "minIntervalSeconds": 3600,
                    "progressDeadlineSeconds": 120, "revisionHistoryLimit": 0},
    }  # fmt: skip
    body.update(changes)
    return body


def build_world(
    kube: LocalKube, workdir: Path, namespace: str, engine: str, kind: str,
    spec: dict[str, Any], with_prometheus: bool = False,
) -> Iterator[StandinWorld]:  # fmt: skip
    pods = 1 if kind == "Deployment" else RANKS  # a pod a rank, or one holding them all
    config = EngineConfig(ranks=pods, layers=len(LAYER_IDS), experts=EXPERTS,
                          slots_per_rank=(EXPERTS + REDUNDANT) // pods)  # fmt: skip
    world = StandinWorld(
        kube, namespace, workdir, config, groups=GROUPS, with_prometheus=with_prometheus,
        app=APP, engine=engine, kind=kind, ep_size=RANKS, redundant=REDUNDANT, experts=EXPERTS,
        placement_spec=spec,
    )  # fmt: skip
    with world.running():
        yield world


class CapacityWatch(threading.Thread):
    """Samples the Ready pods of every group while a rollout runs."""

    def __init__(self, world: StandinWorld, sizes: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.sizes = sizes  # group → pods when whole
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.samples.append((time.monotonic(), self.world.ready_by_group()))
            self._stopping.wait(0.2)

    def finish(self) -> None:
        self._stopping.set()
        self.join(10)

    def fewest_whole_groups(self) -> int:
        return min(sum(ready.get(g, 0) >= size for g, size in self.sizes.items())
                   for _, ready in self.samples)  # fmt: skip

    def first_dip(self, group: str) -> float | None:
        """When ``group`` was first seen short of pods (restarting)."""
        return next((t for t, ready in self.samples if ready.get(group, 0) < self.sizes[group]),
                    None)  # fmt: skip

    def last_dip(self, group: str) -> float | None:
        dips = [t for t, ready in self.samples if ready.get(group, 0) < self.sizes[group]]
        return dips[-1] if dips else None


def event_reasons(world: StandinWorld) -> list[tuple[str, str]]:
    """(reason, message) of the operator's Events about the placement, oldest first."""
    events = [e for e in world.events() if e.get("involvedObject", {}).get("kind") ==
              "ExpertPlacement"]  # fmt: skip
    events.sort(key=lambda e: (e.get("eventTime") or e.get("lastTimestamp") or
                               e.get("firstTimestamp") or "", e["metadata"]["name"]))  # fmt: skip
    return [(e.get("reason", ""), e.get("message", "")) for e in events]


def revision_data(world: StandinWorld, name: str) -> dict[str, Any]:
    revision = next(r for r in world.revisions() if r["metadata"]["name"] == name)
    return dict(revision["data"])


def placement_of(world: StandinWorld, name: str) -> torch.Tensor:
    return torch.tensor(revision_data(world, name)["placement"])
