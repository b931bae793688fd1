"""Engine files, built the way each engine writes them (from their documented schemas and
code read with the search tools; none of their code is copied).

A run of each engine is simulated from one routing: for every step, MoE layer and token, the
experts the router picked (Zipf-skewed, drifting).  Each engine then counts those picks its
own way and writes its own file, so the true per-expert load is known independently of
every reader.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Shape:
    """A model as engines see it: ``hidden_layers`` (num_hidden_layers), the first
    ``first_moe_layer`` dense, ``experts`` routed experts, ``top_k`` picked per token."""

    preset: str
    hf_name: str
    hidden_layers: int
    first_moe_layer: int
    experts: int
    top_k: int
    ranks: int
    redundant: int
    nodes: int = 1

    @property
    def moe_layer_ids(self) -> list[int]:
        return list(range(self.first_moe_layer, self.hidden_layers))

    @property
    def slots(self) -> int:
        return self.experts + self.redundant


SHAPES = {
    "deepseek-v3": Shape("deepseek-v3", "deepseek-ai/DeepSeek-V3", 61, 3, 256, 8, 32, 32, 4),
    "qwen3-30b-a3b": Shape("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", 48, 0, 128, 8, 8, 8),
    "mixtral-8x7b": Shape("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", 32, 0, 8, 2, 4, 4),
}


@dataclass(frozen=True)
class Routing:
    """``picks`` ``[steps, L, tokens, top_k]``: the logical experts the router picked."""

    shape: Shape
    picks: np.ndarray

    def true_load(self) -> np.ndarray:
        """``[L, E]`` tokens routed to each logical expert, all steps together."""
        return self.load_per_step().sum(axis=0)

    def load_per_step(self) -> np.ndarray:
        """``[steps, L, E]``."""
        steps, layers = self.picks.shape[:2]
        load = np.zeros((steps, layers, self.shape.experts), dtype=np.int64)
        for step in range(steps):
            for layer in range(layers):
                load[step, layer] = np.bincount(
                    self.picks[step, layer].ravel(), minlength=self.shape.experts
                )
        return load


def route(shape: Shape, steps: int = 4, tokens: int = 96, seed: int = 0) -> Routing:
    """Zipf-skewed picks, a different hot set per layer, drifting step to step."""
    rng = np.random.default_rng(seed)
    layers = len(shape.moe_layer_ids)
    picks = np.empty((steps, layers, tokens, shape.top_k), dtype=np.int64)
    weights = 1.0 / np.arange(1, shape.experts + 1) ** 1.1
    for layer in range(layers):
        order = rng.permutation(shape.experts)
        for step in range(steps):
            drifted = weights * rng.lognormal(0.0, 0.1, shape.experts)
            p = np.empty(shape.experts)
            p[order] = drifted / drifted.sum()
            for token in range(tokens):
                picks[step, layer, token] = rng.choice(
                    shape.experts, size=shape.top_k, replace=False, p=p
                )
    return Routing(shape, picks)


def startup_map(slots: int, experts: int) -> np.ndarray:
    """``[P]``: what vLLM, SGLang and TensorRT-LLM load first (slot p holds expert p mod E)."""
    return np.arange(slots) % experts


def _slot_counts(picks: np.ndarray, phy2log: np.ndarray) -> np.ndarray:
    """Per-slot counts of one layer's picks ``[tokens, k]`` under ``phy2log`` ``[P]``: a
    token goes to one replica of its expert, round robin by token index."""
    counts = np.zeros(phy2log.shape[0], dtype=np.int64)
    for token, experts in enumerate(picks):
        for expert in experts:
            replicas = np.flatnonzero(phy2log == expert)
            counts[replicas[token % len(replicas)]] += 1
    return counts


def shuffled_map(shape: Shape, seed: int) -> np.ndarray:
    """``[L, P]``: a rearranged placement (every expert kept, redundant slots moved)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in shape.moe_layer_ids:
        extra = rng.choice(shape.experts, size=shape.redundant, replace=True)
        rows.append(rng.permutation(np.concatenate([np.arange(shape.experts), extra])))
    return np.stack(rows)


# -- vLLM ---------------------------------------------------------------------------------


def vllm_jsonl(routing: Routing, path: Path, revision: str = "meta") -> Path:
    """vLLM PR #41141's ``write_stats_path`` JSONL.

    ``revision="meta"`` (current): an ``eplb_load_meta`` line, then ``eplb_load_stats``
    records ``{record_type, version, step, expert_load [L][P], p2l_map [L][P]}``.
    ``revision="inline"`` (earlier): no meta line; each record carries model, step,
    next_rearrange, num_ranks, num_layers, experts_per_rank, tokens [L][R] as well.
    The first half of the steps runs on the start-up map, the rest after a rearrangement.
    """
    shape = routing.shape
    layers = len(shape.moe_layer_ids)
    startup = np.tile(startup_map(shape.slots, shape.experts), (layers, 1))
    rearranged = shuffled_map(shape, seed=11)
    lines = []
    if revision == "meta":
        meta = {
            "record_type": "eplb_load_meta",
            "version": 1,
            "model": shape.hf_name,
            "num_ranks": shape.ranks,
            "num_groups": 1,
            "num_nodes": shape.nodes,
            "num_layers": layers,
            "num_redundant_experts": shape.redundant,
        }
        lines.append(json.dumps(meta))
    steps = routing.picks.shape[0]
    for step in range(steps):
        p2l = startup if step < steps // 2 else rearranged
        expert_load = np.stack(
            [_slot_counts(routing.picks[step, layer], p2l[layer]) for layer in range(layers)]
        )
        record: dict[str, object] = {"record_type": "eplb_load_stats", "version": 1}
        if revision == "inline":
            per_rank = shape.slots // shape.ranks
            record |= {
                "model": shape.hf_name,
                "step": 100 + step,
                "next_rearrange": 3000 - 100 - step,
                "num_ranks": shape.ranks,
                "num_layers": layers,
                "experts_per_rank": [
                    [int(p2l[0][r * per_rank]), int(p2l[0][r * per_rank + per_rank - 1])]
                    for r in range(shape.ranks)
                ],
                "tokens": expert_load.reshape(layers, shape.ranks, -1).sum(-1).tolist(),
            }
        else:
            record["step"] = 100 + step
        record |= {"expert_load": expert_load.tolist(), "p2l_map": p2l.tolist()}
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def vllm_safetensors(routing: Routing, path: Path) -> Path:
    """vLLM PR #26176's ``save_path`` file: the logical load ``[L, E]`` float32 of each model
    (the main model and its one-layer MTP drafter), keyed by model name, version 1."""
    shape = routing.shape
    drafter = routing.load_per_step()[0, :1] // 2
    save_file(
        {
            shape.hf_name: torch.from_numpy(routing.true_load()).float(),
            f"{shape.hf_name}-mtp": torch.from_numpy(drafter).float(),
        },
        str(path),
        metadata={"version": "1"},
    )
    return path


# -- SGLang -------------------------------------------------------------------------------


def sglang_dump(routing: Routing, directory: Path, buffer_size: int = 6) -> Path:
    """SGLang's expert-distribution recorder in ``stat`` mode: ``torch.save`` of
    ``{"rank": 0, "logical_count": [buffer, H, E] int32, "average_utilization_rate_over_
    window": None}``, one row per hidden layer (dense rows zero), unused buffer steps zero."""
    shape = routing.shape
    per_step = routing.load_per_step()
    logical = torch.zeros(buffer_size, shape.hidden_layers, shape.experts, dtype=torch.int32)
    logical[: per_step.shape[0], shape.first_moe_layer :] = torch.from_numpy(per_step)
    path = directory / f"expert_distribution_recorder_{time.time()}.pt"
    torch.save(
        {
            "rank": 0,
            "logical_count": logical,
            "average_utilization_rate_over_window": None,
        },
        path,
    )
    return path


# -- TensorRT-LLM -------------------------------------------------------------------------


def trtllm_statistics(
    routing: Routing,
    directory: Path,
    ep_size: int = 2,
    balancer: dict[int, list[int]] | None = None,
) -> Path:
    """TensorRT-LLM's ``EXPERT_STATISTIC_PATH``: ``meta_info.json`` from rank 0 and
    ``rank{r}.safetensors`` of ``"{iteration}_{layer_idx}"`` → int64 bincount, each rank
    counting its own tokens (attention DP).  With ``balancer`` (``initial_global_
    assignments``, layer_updates_per_iter 0) the counts are per slot: each pick goes to a
    slot holding its expert, and meta_info's num_experts is the slot count."""
    shape = routing.shape
    directory.mkdir(parents=True, exist_ok=True)
    width = shape.experts if balancer is None else len(next(iter(balancer.values())))
    steps = routing.picks.shape[0]
    for rank in range(ep_size):
        records = {}
        for step in range(steps):
            iteration = 50 + step
            for index, layer_idx in enumerate(shape.moe_layer_ids):
                picks = routing.picks[step, index, rank::ep_size]
                if balancer is not None:
                    slots = np.array(balancer[layer_idx])
                    picks = np.array(
                        [
                            [np.flatnonzero(slots == e)[t % (slots == e).sum()] for e in row]
                            for t, row in enumerate(picks)
                        ]
                    )
                counts = torch.bincount(torch.from_numpy(picks).flatten(), minlength=width)
                records[f"{iteration}_{layer_idx}"] = counts
        save_file(records, str(directory / f"rank{rank}.safetensors"))
    (directory / "meta_info.json").write_text(
        json.dumps({"num_experts": width, "num_experts_per_token": shape.top_k})
    )
    return directory


def trtllm_balancer_yaml(assignments: dict[int, list[int]], path: Path) -> Path:
    """A ``MoeLoadBalancerConfig`` file as TensorRT-LLM's examples write it."""
    lines = ["initial_global_assignments:"]
    lines += [f"  {layer}: {row}" for layer, row in assignments.items()]
    lines += [f"num_slots: {len(next(iter(assignments.values())))}", "layer_updates_per_iter: 0"]
    path.write_text("\n".join(lines) + "\n")
    return path
