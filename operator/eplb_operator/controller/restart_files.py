"""The engine's start-up file of a revision, in a ConfigMap the ExpertPlacement owns.

One ConfigMap per revision, ``<placement>-placement-<n>``, so a pod keeps reading the file
it started with while others restart, and a rollback is a restart onto an older file.
Revision 0 is the engines' start-up placement (slot p holds expert p mod E), there before
the first rebalance so that pods can start.  Rendering is pure (``eplb_core.formats``
writes each engine's format); the I/O is in :mod:`.restart_kube`.
"""

from __future__ import annotations

from typing import Any

import torch

from eplb_core.formats.document import PlacementDocument
from eplb_core.placements import start_up_placement
from eplb_operator.api.v1alpha1 import API_VERSION, KIND, ExpertPlacementSpec
from eplb_operator.controller.kube import REVISION_LABEL
from eplb_operator.formats.mappings import render

# The key of each engine's file: the name it has where the pod mounts the ConfigMap.
FILE_KEYS = {
    "sglang": "init-expert-location.json",  # --init-expert-location
    "trtllm": "moe-load-balancer.yaml",  # moe_config.load_balancer
    "vllm": "read-stats.jsonl",  # --eplb-config read_stats_path
}
VOLUME = "eplb-placement"  # the pod template's volume that the operator points at a revision
NUMBER_LABEL = "eplb.io/revision"


def config_map_name(placement: str, number: int) -> str:
    return f"{placement}-placement-{number}"


def startup_file(
    spec: ExpertPlacementSpec, placement: torch.Tensor, load: torch.Tensor | None
) -> str:
    """The text of ``spec.engine``'s start-up file for ``placement`` ``[L, P]``, planned from
    ``load`` ``[L, E]`` (vLLM plans its own placement from load: it needs it).  Raises
    InvalidInputError when the engine cannot take it."""
    topology = spec.placement_topology()
    doc = PlacementDocument(
        placement.long().numpy(),
        spec.model.engine_layer_ids(),
        model=spec.model.name,
        num_experts=topology.num_experts,
        num_ranks=topology.num_ranks,
        slots_per_rank=topology.slots_per_rank,
        num_groups=spec.model.groups,
        num_nodes=topology.num_nodes,
        hidden_layers=spec.model.hidden_layers,
        windows=None if load is None else load.double().unsqueeze(0).numpy(),
    )
    return render(doc, spec.engine, "")  # type: ignore[arg-type]  # engine != table here


def startup_revision(spec: ExpertPlacementSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Revision 0: ``[L, P]`` slot p holds expert p mod E, and (for vLLM, which needs load) a
    load ``[L, E]`` of one token per expert: nothing measured yet."""
    topology = spec.placement_topology()
    layers = spec.model.layers
    placement = start_up_placement(layers, topology.num_slots, topology.num_experts)
    return torch.from_numpy(placement), torch.ones(
        layers, topology.num_experts, dtype=torch.float64
    )


def config_map_body(owner: dict[str, Any], number: int, engine: str, text: str) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(meta["name"], number),
            "namespace": meta.get("namespace"),
            "labels": {REVISION_LABEL: meta["name"], NUMBER_LABEL: str(number)},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {FILE_KEYS[engine]: text},
    }
