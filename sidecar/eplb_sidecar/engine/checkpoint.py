"""The reference model's checkpoint: every (layer, expert) in safetensors, one file per layer."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from eplb_sidecar.checkpoint import DEFAULT_KEY_TEMPLATE, INDEX_NAME
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.weights import expert_weights


def write_checkpoint(
    directory: Path, config: EngineConfig, key_template: str = DEFAULT_KEY_TEMPLATE
) -> None:
    """Write the weights of every logical expert, plus a Hugging Face style index."""
    directory.mkdir(parents=True, exist_ok=True)
    specs = config.weight_specs()
    weight_map: dict[str, str] = {}
    for layer in range(config.layers):
        name = f"model-layer-{layer:05d}.safetensors"
        tensors = {}
        for expert in range(config.experts):
            for weight, value in expert_weights(specs, config.seed, layer, expert).items():
                key = key_template.format(layer=layer, expert=expert, name=weight)
                tensors[key] = value.contiguous()
                weight_map[key] = name
        save_file(tensors, str(directory / name))
    (directory / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}, indent=1))
