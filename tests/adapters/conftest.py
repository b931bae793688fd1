"""Tiny Hugging Face MoE models for the adapter's tests, and in-process replays of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from eplb_sidecar.adapters.transformers.engine import TransformersEngine
from eplb_sidecar.adapters.transformers.models import moe_blocks
from eplb_sidecar.adapters.transformers.options import Architecture, TransformersOptions
from eplb_sidecar.engine.config import EngineConfig, Workload

ARCHITECTURES: list[Architecture] = ["mixtral", "qwen3-moe", "deepseek-v3"]
# Mixtral routes to 2 experts, the others to more (8 in the real models; 4 of 8 here).
TOP_K = {"mixtral": 2, "qwen3-moe": 4, "deepseek-v3": 4}
DISPATCH_BLOCK = 4  # small: a hot expert's pairs spread over its replicas within a step


def model_config(architecture: Architecture, **changes: object) -> EngineConfig:
    """Two ranks of five slots for eight experts: two redundant slots."""
    base = EngineConfig(
        ranks=2, layers=2, experts=8, slots_per_rank=5, hidden=64, intermediate=32,
        top_k=TOP_K[architecture], workload=Workload(tokens_per_step=64, step_interval=0.1),
    )  # fmt: skip
    return base.model_copy(update=changes)


def options(architecture: Architecture) -> TransformersOptions:
    return TransformersOptions(architecture=architecture, dispatch_block=DISPATCH_BLOCK)


def single_rank(
    config: EngineConfig, architecture: Architecture, table_dir: Path, slots: int | None = None
) -> TransformersEngine:
    """The same model served by one rank in this process (``slots`` per rank, default E)."""
    alone = config.model_copy(
        update={"ranks": 1, "rank": 0, "slots_per_rank": slots or config.experts}
    )
    return TransformersEngine(alone, options(architecture), table_dir)


@contextmanager
def router_choices(model: torch.nn.Module) -> Iterator[list[list[torch.Tensor]]]:
    """Records, per MoE layer, the experts ``[T, k]`` each call of the model's own router
    chose (hooks on every block's ``gate``)."""
    seen: list[list[torch.Tensor]] = []
    handles = []
    for layer, block in enumerate(moe_blocks(model)):
        seen.append([])

        def record(
            module: torch.nn.Module,
            args: object,
            output: tuple[torch.Tensor, ...],
            layer: int = layer,
        ) -> None:
            seen[layer].append(output[2].detach().clone())

        handles.append(block.gate.register_forward_hook(record))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run in-process models with one thread, as the engine processes do: the bits of a
    matmul may depend on how many threads split it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
