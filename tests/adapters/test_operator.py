"""Hot swap driven by the operator, under real model code: a StatefulSet of transformers
engines (DeepSeek-V3) with the injected sidecar on the real control
plane; the operator rolls an offline mapping out, the sidecars export per-expert counts,
and the logits stay bit-identical while every slot holds its expert's exact weights."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eplb_local.engine.verify import group_errors
from eplb_local.world import LocalKube, World
from eplb_operator.placement import Topology, plan
from eplb_operator.workloads import zipf_load
from eplb_sidecar.adapters.transformers.options import Architecture
from eplb_sidecar.engine.startup import identity_placement

from .conftest import model_config, options

pytestmark = pytest.mark.slow


# One architecture: the operator never sees the model (it drives the same sidecar API for
# each), and tests/adapters/test_pods.py hot-swaps all three under the sidecar; DeepSeek-V3
# has the most to get right (shared experts, grouped routing).
@pytest.fixture
def model_world(kube: LocalKube, tmp_path: Path, namespace: str) -> Iterator[World]:
    architecture: Architecture = "deepseek-v3"
    world = World(kube, namespace, tmp_path, model_config(architecture),
                  transformers=options(architecture))  # fmt: skip
    with world.running():
        yield world


def exported_tokens(world: World) -> float:
    """Sum of eplb_expert_tokens_total over every sidecar's /metrics."""
    total = 0.0
    for pod in world.pods():
        with urllib.request.urlopen(f"http://{pod.ip}:9470/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("eplb_expert_tokens_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_operator_hot_swaps_a_real_model_without_changing_its_logits(
    model_world: World,
) -> None:
    world = model_world
    config = world.config
    expected = world.probe()
    assert expected.dim() == 2  # logits [T, vocab]
    world.wait(lambda: exported_tokens(world) > 0, 60, "per-expert counts on /metrics")
    topology = Topology(config.experts, config.ranks, config.slots_per_rank, 1, 1)
    load = zipf_load(config.layers, config.experts, 1.4, seed=7)
    target = plan(load, topology, previous=identity_placement(config)).placement
    assert not torch.equal(target, identity_placement(config))
    mapping = {"schema": "eplb.io/placement-v1", "layers": config.layers,
               "experts": config.experts, "phy2log": target.tolist()}  # fmt: skip
    api = world.kube.api_checked()
    api.checked("POST", f"/api/v1/namespaces/{world.namespace}/configmaps",
                {"metadata": {"name": "model-mapping"},
                 "data": {"placement.json": json.dumps(mapping)}})  # fmt: skip
    api.checked("POST", world.xpl, {
        "apiVersion": "eplb.io/v1alpha1", "kind": "ExpertPlacement",
        "metadata": {"name": world.app},
        "spec": {
            "selector": {"matchLabels": {"app": world.app}},
            "pods": {"rankLabel": "apps.kubernetes.io/pod-index"},
            "model": {"layers": config.layers, "experts": config.experts},
            "topology": {"ranks": config.ranks, "slotsPerRank": config.slots_per_rank},
            "offline": {"configMapRef": {"name": "model-mapping"}},
            "rollout": {"layersPerStep": 1, "barrierTimeoutSeconds": 20},
        },
    })  # fmt: skip
    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 120, "the rollout")
    tables = world.tables()
    assert all(torch.equal(table.routing, target) for table in tables)
    assert group_errors(tables, config.seed) == []  # every slot: its expert's exact weights
    assert torch.equal(world.probe(), expected)  # the model computes the same, bit for bit
