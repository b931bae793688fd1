"""Tiny Mixtral, Qwen3-MoE and DeepSeek-V3 models built in code: random weights, no download.

The model code is Hugging Face ``transformers``' own (``MixtralForCausalLM``,
``Qwen3MoeForCausalLM``, ``DeepseekV3ForCausalLM``): their routers (Mixtral's softmax top-2,
Qwen3's normalized top-k, DeepSeek-V3's grouped top-k with a correction bias and its shared
expert) run unchanged.  Every MoE block of the three has the same two parts: ``gate`` (the
router: ``hidden [T, H]`` → ``(logits, weights [T, k], experts [T, k])``) and ``experts``
(fused ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``, called as
``experts(hidden, experts, weights)``); the adapter replaces only ``experts``.

Weights: everything but the experts comes from the library's own initialisation under a
fixed seed; each routed expert's ``w13 [2I, H]`` (= a row of ``gate_up_proj``) and
``w2 [H, I]`` (= a row of ``down_proj``) derive from (seed, MoE layer, expert) alone
(:func:`eplb_sidecar.engine.weights.expert_weights`, as the reference engine's), so any slot
can be checked and the reference engine's checkpoint writer serves these models too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    DeepseekV3Config,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3MoeConfig,
)

from eplb_sidecar.adapters.transformers.options import ModelShape
from eplb_sidecar.contract.layout import torch_dtype
from eplb_sidecar.engine.weights import expert_weights

VOCAB = 256
MAX_POSITIONS = 4096
# DeepSeek-V3 starts with dense layers (3 of 61); one keeps the tiny model honest about
# table rows being MoE layers only (vLLM's and TensorRT-LLM's convention).
DEEPSEEK_DENSE_LAYERS = 1


def _mixtral(shape: ModelShape) -> PretrainedConfig:
    heads = shape.hidden // shape.head_dim
    return MixtralConfig(
        vocab_size=VOCAB, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=heads, num_key_value_heads=heads,
        num_local_experts=shape.experts, num_experts_per_tok=shape.top_k,
        max_position_embeddings=MAX_POSITIONS,
    )  # fmt: skip


def _qwen3_moe(shape: ModelShape) -> PretrainedConfig:
    heads = shape.hidden // shape.head_dim
    return Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=shape.hidden, intermediate_size=4 * shape.intermediate,
        moe_intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=heads, num_key_value_heads=heads,
        num_experts=shape.experts, num_experts_per_tok=shape.top_k,
        norm_topk_prob=True,  # as Qwen3-30B-A3B and Qwen3-235B-A22B ship
        max_position_embeddings=MAX_POSITIONS,
    )  # fmt: skip


def _deepseek_v3(shape: ModelShape) -> PretrainedConfig:
    heads = shape.hidden // shape.head_dim
    groups, chosen = shape.expert_groups
    return DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=shape.hidden, intermediate_size=4 * shape.intermediate,
        moe_intermediate_size=shape.intermediate,
        num_hidden_layers=DEEPSEEK_DENSE_LAYERS + shape.layers,
        first_k_dense_replace=DEEPSEEK_DENSE_LAYERS, num_attention_heads=heads,
        num_key_value_heads=heads, n_routed_experts=shape.experts, n_shared_experts=1,
        num_experts_per_tok=shape.top_k, n_group=groups, topk_group=chosen,
        q_lora_rank=shape.hidden // 2, kv_lora_rank=shape.hidden // 4,
        qk_nope_head_dim=shape.head_dim, qk_rope_head_dim=shape.head_dim // 2,
        v_head_dim=shape.head_dim, max_position_embeddings=MAX_POSITIONS,
    )  # fmt: skip


_CONFIGS: dict[str, Callable[[ModelShape], PretrainedConfig]] = {
    "mixtral": _mixtral,
    "qwen3-moe": _qwen3_moe,
    "deepseek-v3": _deepseek_v3,
}


def hf_config(shape: ModelShape) -> PretrainedConfig:
    """The library's configuration object of ``shape``."""
    return _CONFIGS[shape.architecture](shape)


def moe_blocks(model: nn.Module) -> list[Any]:
    """The model's sparse MoE blocks in layer order (dense layers skipped): row ``i`` of
    the expert table is ``moe_blocks(model)[i]``.  Typed ``Any``: the three block classes
    share no base class, only the ``gate`` and ``experts`` attributes."""
    blocks = [
        module
        for module in model.modules()
        if isinstance(getattr(module, "gate", None), nn.Module)
        and isinstance(getattr(module, "experts", None), nn.Module)
    ]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no MoE block (gate + experts)")
    return blocks


def build_model(shape: ModelShape, routed_experts: bool = True) -> PreTrainedModel:
    """The stock model of ``shape`` on the CPU, in eval mode: the same bits for the same shape.

    With ``routed_experts`` each block's fused ``gate_up_proj``/``down_proj`` rows hold the
    experts of :func:`routed_expert`; without, they keep the library's initialisation (an
    engine replaces them with its table's slots and never reads them).
    """
    config = hf_config(shape)
    dtype = torch_dtype(shape.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    model.eval()
    generator = torch.Generator().manual_seed(shape.seed)
    with torch.no_grad():
        for layer, block in enumerate(moe_blocks(model)):
            bias = getattr(block.gate, "e_score_correction_bias", None)
            if isinstance(bias, torch.Tensor):
                # Trained DeepSeek-V3 checkpoints carry a non-zero bias; zeros would leave
                # that part of the router untested.  Half the spread of the sigmoid scores
                # (about 0.04 here): it shifts choices without deciding them alone.
                bias.copy_(torch.randn(bias.shape, generator=generator) * 0.02)
            if routed_experts:
                for expert in range(shape.experts):
                    weights = routed_expert(shape, layer, expert)
                    block.experts.gate_up_proj[expert].copy_(weights["w13"])
                    block.experts.down_proj[expert].copy_(weights["w2"])
    return model  # type: ignore[no-any-return]


def routed_expert(
    shape: ModelShape, layer: int, expert: int, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """``w13 [2I, H]`` and ``w2 [H, I]`` of routed ``expert`` of MoE layer ``layer``."""
    return expert_weights(shape.weight_specs, shape.seed, layer, expert, device)
