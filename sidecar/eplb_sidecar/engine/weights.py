"""Expert weights derived from (seed, layer, logical expert) alone, so any slot can be checked."""

from __future__ import annotations

import math

import torch

from eplb_sidecar.contract.layout import WeightSpec

_LAYER_STRIDE = 1_000_003
_SEED_STRIDE = 7_919


def expert_seed(seed: int, layer: int, expert: int) -> int:
    return (seed * _SEED_STRIDE + layer) * _LAYER_STRIDE + expert


def expert_weights(
    specs: tuple[WeightSpec, ...], seed: int, layer: int, expert: int, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """name → tensor of ``spec.shape``: the weights of logical ``expert`` of ``layer``.

    Scaled by ``1/sqrt(fan_in)`` so activations stay O(1).  The same arguments give the same
    bits on the same device type.
    """
    generator = torch.Generator(device=device).manual_seed(expert_seed(seed, layer, expert))
    out: dict[str, torch.Tensor] = {}
    for spec in specs:
        values = torch.randn(spec.shape, generator=generator, device=device)
        out[spec.name] = (values / math.sqrt(spec.shape[-1])).to(spec.torch_dtype)
    return out


def router_weights(hidden: int, experts: int, seed: int, layer: int) -> torch.Tensor:
    """``[H, E]`` float32 gate projection of a layer."""
    generator = torch.Generator().manual_seed(expert_seed(seed, layer, -1) & 0x7FFF_FFFF)
    return torch.randn(hidden, experts, generator=generator) / math.sqrt(hidden)
