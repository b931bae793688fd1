"""The expert table an engine of this package publishes at start-up (engine contract, step 1-2).

Slot ``p`` holds expert ``p mod E``; every expert's weights derive from (seed, layer, expert)
alone (:func:`~eplb_sidecar.engine.weights.expert_weights`).  Used by the reference engine
and by the ``transformers`` adapter, whose routed experts are the same tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eplb_core.placements import start_up_placement
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.weights import expert_weights


def identity_placement(config: EngineConfig) -> torch.Tensor:
    """``[L, P]``: the start-up placement."""
    return torch.from_numpy(
        start_up_placement(config.layers, config.ranks * config.slots_per_rank, config.experts)
    )


def publish_start_up_table(config: EngineConfig, table_dir: Path) -> ExpertTable:
    """Load this rank's slots ``[L, S, …]`` of the start-up placement and publish the table.

    On CPU the weights live in the table's shared-memory files; on a GPU in tensors of the
    engine's that the table shares through CUDA IPC.  ``group_load`` starts at zero: these
    engines know every rank's load.
    """
    layout = config.layout()
    phy2log = identity_placement(config)
    first, S = layout.first_slot, config.slots_per_rank
    specs = config.weight_specs()
    device = torch.device(config.device)
    local = {
        spec.name: torch.empty(
            (config.layers, S, *spec.shape), dtype=spec.torch_dtype, device=device
        )
        for spec in specs
    }
    for layer in range(config.layers):
        for slot in range(S):
            expert = int(phy2log[layer, first + slot])
            for name, value in expert_weights(
                specs, config.seed, layer, expert, config.device
            ).items():
                local[name][layer, slot].copy_(value)
    if layout.transport == "shm":
        table = ExpertTable.create(table_dir, layout, phy2log)
        for name, value in local.items():
            table.weights[name].copy_(value)
    else:
        table = ExpertTable.create(table_dir, layout, phy2log, cuda_weights=local)
    table.group_load.zero_()
    return table
