"""What each engine does when it starts from a file ``eplb plan`` wrote, re-implemented from
the engines' documented behaviour (their loaders read with the search tools, not copied):
each raises where the engine would fail, and returns what the engine would serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def sglang_init_expert_location(
    path: Path, num_hidden_layers: int, num_experts: int, num_redundant: int, ep_size: int
) -> np.ndarray:
    """SGLang ``--init-expert-location FILE.json``: ``json.loads``, then
    ``ExpertLocationMetadata.init_by_mapping(server_args, model_config, **data)`` (so no key
    but ``physical_to_logical_map``), a ``[num_hidden_layers, E + R]`` tensor that every
    layer indexes by its layer id, ``E + R`` split evenly over the EP ranks, and a replica of
    every logical expert in every row (``logical_to_all_physical_map``)."""
    data = json.loads(path.read_text())
    extra = set(data) - {"physical_to_logical_map"}
    if extra:
        raise TypeError(f"init_by_mapping() got unexpected keyword arguments {sorted(extra)}")
    table = np.asarray(data["physical_to_logical_map"])
    num_physical = num_experts + num_redundant
    if num_physical % ep_size:
        raise AssertionError("num_physical_experts % ep_size != 0")
    if table.shape != (num_hidden_layers, num_physical):
        raise IndexError(f"map {table.shape}, model needs ({num_hidden_layers}, {num_physical})")
    if table.min() < 0 or table.max() >= num_experts:
        raise IndexError("logical expert id out of range")
    for layer_id, row in enumerate(table):
        if len(set(row.tolist())) != num_experts:
            raise ValueError(f"layer {layer_id}: a logical expert has no physical replica")
    return table


def trtllm_load_balancer(
    options_path: Path, ep_size: int, moe_layer_ids: list[int]
) -> dict[int, list[int]]:
    """TensorRT-LLM's LLM API options: ``moe_config.load_balancer`` is a path, the file is
    ``yaml.safe_load``ed into ``MoeLoadBalancerConfig(**config)`` (a strict model: only
    num_slots, initial_global_assignments: Dict[int, List[int]], layer_updates_per_iter),
    ``setup(ep_rank, ep_size)`` needs num_slots divisible by ep_size, and every MoE layer
    calls ``get_layer_initial_global_assignments(layer_idx)``: KeyError when absent, and the
    row must hold num_slots entries."""
    options = yaml.safe_load(options_path.read_text())
    balancer_path = Path(options["moe_config"]["load_balancer"])
    if not balancer_path.is_absolute():
        balancer_path = options_path.parent / balancer_path
    config: dict[str, Any] = yaml.safe_load(balancer_path.read_text())
    unknown = set(config) - {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    if unknown:
        raise ValueError(f"extra fields not permitted: {sorted(unknown)}")
    num_slots = int(config["num_slots"])
    if num_slots % ep_size:
        raise ValueError(f"num_slots ({num_slots}) must be divisible by ep_size ({ep_size})")
    assignments = {
        int(key): [int(v) for v in row] for key, row in config["initial_global_assignments"].items()
    }
    served = {}
    for layer_idx in moe_layer_ids:
        if layer_idx not in assignments:
            raise KeyError(f"layer_idx {layer_idx} not found in `initial_global_assignments`.")
        if len(assignments[layer_idx]) != num_slots:
            raise ValueError(f"Assignment length for layer {layer_idx} != num_slots")
        served[layer_idx] = assignments[layer_idx]
    if int(config.get("layer_updates_per_iter", 0)) != 0:
        raise ValueError("not a static placement")
    return served


def vllm_read_stats(path: Path, num_moe_layers: int, num_redundant_experts: int) -> np.ndarray:
    """vLLM's ``eplb_config.read_stats_path`` (PR #41141): exactly one ``eplb_load_meta``
    record, first; at least one ``eplb_load_stats`` after it; no other record_type; each
    record's ``expert_load`` and ``p2l_map`` of one shape; physical load folded to logical
    with the record's own map (``scatter_add``) and summed over records.  The meta must match
    the model (MoE layers) and the config (redundant experts).  Returns ``[L, E]``."""
    meta = None
    logical = None
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        kind = record.get("record_type")
        if kind == "eplb_load_meta":
            if meta is not None:
                raise ValueError("second eplb_load_meta record")
            meta = record
        elif kind == "eplb_load_stats":
            if meta is None:
                raise ValueError("eplb_load_stats before eplb_load_meta")
            load = np.asarray(record["expert_load"], dtype=np.float64)
            p2l = np.asarray(record["p2l_map"], dtype=np.int64)
            if load.shape != p2l.shape:
                raise ValueError("expert_load shape does not match p2l_map shape")
            current = np.zeros((load.shape[0], int(p2l.max()) + 1))
            for layer in range(load.shape[0]):
                np.add.at(current[layer], p2l[layer], load[layer])
            logical = current if logical is None else logical + current
        else:
            raise ValueError(f"unexpected record_type {kind!r}")
    if meta is None:
        raise ValueError("no eplb_load_meta record found")
    if logical is None:
        raise ValueError("no eplb_load_stats records found")
    if meta["num_layers"] != num_moe_layers or logical.shape[0] != num_moe_layers:
        raise ValueError("num_layers does not match the model's MoE layers")
    if meta["num_redundant_experts"] != num_redundant_experts:
        raise ValueError("num_redundant_experts does not match eplb_config")
    return logical
