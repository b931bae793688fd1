"""Expert weights re-read from the model's safetensors checkpoint: the recovery source.

Used when no participating peer holds an expert (a pod is gone, or a restarted pod is
re-synced alone).  Tensors are found by a key template, e.g. the default
``model.layers.{layer}.mlp.experts.{expert}.{name}`` with ``name`` a weight of the table's
layout; ``model.safetensors.index.json`` (Hugging Face's weight map) is used when present,
otherwise every ``*.safetensors`` file's keys are listed once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from eplb_sidecar.contract.layout import WeightSpec

DEFAULT_KEY_TEMPLATE = "model.layers.{layer}.mlp.experts.{expert}.{name}"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """The checkpoint lacks a tensor or holds one of the wrong shape or dtype."""


class CheckpointReader:
    """Reads one expert's tensors ``{name: spec.shape}`` from a checkpoint directory."""

    def __init__(
        self,
        directory: Path,
        specs: tuple[WeightSpec, ...],
        key_template: str = DEFAULT_KEY_TEMPLATE,
    ) -> None:
        self.directory = directory
        self.specs = specs
        self.key_template = key_template
        index = directory / INDEX_NAME
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            self._files = {key: directory / name for key, name in weight_map.items()}
        else:
            self._files = {}
            for path in sorted(directory.glob("*.safetensors")):
                with safe_open(str(path), framework="pt") as handle:
                    self._files.update(dict.fromkeys(handle.keys(), path))
        if not self._files:
            raise CheckpointError(f"no safetensors tensors under {directory}")

    def key(self, layer: int, expert: int, name: str) -> str:
        return self.key_template.format(layer=layer, expert=expert, name=name)

    def read(self, layer: int, expert: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        """name → tensor ``spec.shape`` of ``expert`` in ``layer``."""
        out: dict[str, torch.Tensor] = {}
        for spec in self.specs:
            key = self.key(layer, expert, spec.name)
            path = self._files.get(key)
            if path is None:
                raise CheckpointError(f"checkpoint {self.directory} has no tensor {key!r}")
            with safe_open(str(path), framework="pt", device=device) as handle:
                tensor = handle.get_tensor(key)
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.torch_dtype:
                raise CheckpointError(
                    f"checkpoint tensor {key!r} is {tuple(tensor.shape)} {tensor.dtype}; the "
                    f"engine's table expects {spec.shape} {spec.torch_dtype}"
                )
            out[spec.name] = tensor
        return out
