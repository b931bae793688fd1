"""TensorRT-LLM's files: expert statistics in, the MoE load balancer's YAML out.

In: ``tensorrt_llm/_torch/expert_statistic.py`` (``EXPERT_STATISTIC_ITER_RANGE=A-B``,
``EXPERT_STATISTIC_PATH=DIR``) writes ``DIR/meta_info.json`` (``{"num_experts",
"num_experts_per_token"}``, rank 0) and ``DIR/rank{r}.safetensors``: ``"{iteration}_{layer}"``
→ int64 token counts, keyed by the model's real layer id.  The MoE layers count through
``ExpertStatistic.maybe_add_info(num_slots, token_selected_slots)``: with the load balancer
off that is per expert; with it on, per *slot* of the placement in force, and
``num_experts`` in meta_info is then the slot count.  Per-slot counts fold back to experts
with that placement: its YAML, given as ``--previous``.

Out: the ``MoeLoadBalancerConfig`` YAML (``num_slots``, ``initial_global_assignments:
{layer_id: [P]}``, ``layer_updates_per_iter: 0`` for a fixed placement), which TensorRT-LLM
reads from the LLM API option ``moe_config: {load_balancer: FILE}``.  It looks each MoE
layer up by its layer id, so the keys are the real ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from eplb_core.errors import InvalidInputError
from eplb_core.formats.counts import (
    check_layer_ids,
    count_array,
    fold_slots,
    id_array,
    is_integer,
    one_line,
)
from eplb_core.formats.document import PlacementDocument
from eplb_core.formats.loadstats import RawStats, StepWindow, WindowAccumulator

_RANK_FILE = re.compile(r"^rank(\d+)\.safetensors$")
_KEY = re.compile(r"^(\d+)_(\d+)$")
ASSIGNMENTS = "initial_global_assignments"
BALANCER_KEYS = {"num_slots", ASSIGNMENTS, "layer_updates_per_iter"}


def read_trtllm(
    path: Path,
    steps: StepWindow,
    num_experts: int | None,
    recorded: PlacementDocument | None,
) -> RawStats:
    """The statistic directory, counts summed over ranks, per iteration and layer.

    ``num_experts`` (from ``--experts``/``--model``) tells per-expert from per-slot counts;
    ``recorded`` is the placement in force while recording (``--previous``), to fold slots.
    """
    from safetensors.torch import load_file

    meta_path = path / "meta_info.json"
    if not meta_path.is_file():
        raise InvalidInputError(
            "a directory without meta_info.json: not a TensorRT-LLM expert-statistic dump"
        )
    meta = json.loads(meta_path.read_text())
    width = meta.get("num_experts") if isinstance(meta, dict) else None
    if not is_integer(width, 1):
        raise InvalidInputError("meta_info.json needs num_experts, a positive integer")
    files = sorted(f for f in path.iterdir() if _RANK_FILE.match(f.name))
    if not files:
        raise InvalidInputError("no rank<N>.safetensors beside meta_info.json")
    totals: dict[tuple[int, int], np.ndarray] = {}
    for file in files:
        try:
            tensors = load_file(str(file))
        except Exception as error:  # safetensors' own error types for corrupt files
            raise InvalidInputError(f"{file.name} is not readable ({one_line(error)})") from None
        for key, counts in tensors.items():
            match = _KEY.match(key)
            if match is None:
                raise InvalidInputError(f"{file.name}: key {key!r} is not '<iteration>_<layer>'")
            row = count_array(counts, f"{file.name} {key}", ("slot",))
            if row.shape != (width,):
                raise InvalidInputError(
                    f"{file.name} {key} has shape {list(row.shape)}, meta_info says {width} "
                    "per layer"
                )
            index = (int(match[1]), int(match[2]))
            totals[index] = totals[index] + row if index in totals else row
    iterations = sorted({i for i, _ in totals})
    layers = sorted({layer for _, layer in totals})
    missing = next(
        ((i, layer) for i in iterations for layer in layers if (i, layer) not in totals), None
    )
    if missing is not None:
        raise InvalidInputError(f"iteration {missing[0]} has no counts for layer {missing[1]}")
    accumulator = WindowAccumulator(steps)
    for iteration in iterations:
        accumulator.add(iteration, np.stack([totals[(iteration, layer)] for layer in layers]))
    windows, labels = accumulator.result()
    windows = _per_expert(windows, layers, num_experts, recorded)
    model = meta.get("model") if isinstance(meta.get("model"), str) else None
    return RawStats(windows, labels, "trtllm", model, layer_ids=layers)


def _per_expert(
    windows: np.ndarray,
    layers: list[int],
    num_experts: int | None,
    recorded: PlacementDocument | None,
) -> np.ndarray:
    """``[T, L, C]`` counts as ``[T, L, E]`` per expert, folding balancer slots if C != E."""
    width = windows.shape[2]
    if num_experts is None and recorded is not None and recorded.phy2log.shape[1] == width:
        named = recorded.experts_named
        num_experts = named if named < width else None
    if num_experts is None or num_experts >= width:  # fewer than the experts: another model
        return windows
    if recorded is None:
        raise InvalidInputError(
            f"it counts {width} entries per layer but the model has {num_experts} experts: "
            "TensorRT-LLM's load balancer was on, so these are slots; pass its YAML that was "
            "in force while recording as --previous to fold them back to experts"
        )
    if recorded.phy2log.shape[1] != width:
        raise InvalidInputError(
            f"it counts {width} slots per layer but --previous has "
            f"{recorded.phy2log.shape[1]}: it is not the placement that was in force"
        )
    if recorded.layer_updates_per_iter:
        raise InvalidInputError(
            "--previous moved experts while recording (layer_updates_per_iter "
            f"{recorded.layer_updates_per_iter}): per-slot counts cannot be folded back; "
            "record with layer_updates_per_iter: 0"
        )
    rows = recorded.rows_for(layers, "--previous").astype(np.int64)
    return fold_slots(windows, rows, num_experts)


def render_balancer(doc: PlacementDocument) -> str:
    """The MoeLoadBalancerConfig YAML, keyed by engine layer id, one layer per line."""
    lines = [f"num_slots: {doc.phy2log.shape[1]}", f"{ASSIGNMENTS}:"]
    lines += [
        f"  {layer}: [{', '.join(map(str, row))}]"
        for layer, row in zip(doc.layer_ids, doc.phy2log.tolist(), strict=True)
    ]
    lines.append("layer_updates_per_iter: 0")
    return "\n".join(lines) + "\n"


def is_balancer(document: dict[str, Any]) -> bool:
    return ASSIGNMENTS in document or "moe_config" in document


def parse_balancer(document: dict[str, Any]) -> PlacementDocument:
    """The balancer YAML, or LLM API options holding it inline under moe_config."""
    if "moe_config" in document:
        moe_config = document["moe_config"]
        balancer = moe_config.get("load_balancer") if isinstance(moe_config, dict) else None
        if isinstance(balancer, str):
            raise InvalidInputError(
                f"moe_config.load_balancer points to {balancer}: pass that file"
            )
        if not isinstance(balancer, dict):
            raise InvalidInputError("moe_config has no load_balancer")
        document = balancer
    unknown = sorted(set(document) - BALANCER_KEYS)
    if unknown:
        raise InvalidInputError(
            f"TensorRT-LLM's MoeLoadBalancerConfig takes only {sorted(BALANCER_KEYS)}; "
            f"found {unknown}"
        )
    assignments = document.get(ASSIGNMENTS)
    if not isinstance(assignments, dict) or not assignments:
        raise InvalidInputError(f"{ASSIGNMENTS} must map layer id → slots")
    keys = []
    for key in assignments:
        text = str(key)
        if isinstance(key, bool) or not text.isdigit():
            raise InvalidInputError(f"{ASSIGNMENTS} key {key!r} is not a layer id")
        keys.append((int(text), key))
    keys.sort()
    check_layer_ids([layer for layer, _ in keys], f"{ASSIGNMENTS} keys")
    rows = id_array([assignments[key] for _, key in keys], ASSIGNMENTS, dims=2)
    num_slots = document.get("num_slots")
    if num_slots is not None and num_slots != rows.shape[1]:
        raise InvalidInputError(f"num_slots is {num_slots}, the assignments have {rows.shape[1]}")
    updates = document.get("layer_updates_per_iter", 0)
    if not is_integer(updates, 0):
        raise InvalidInputError("layer_updates_per_iter must be an integer >= 0")
    return PlacementDocument(rows, [layer for layer, _ in keys], layer_updates_per_iter=updates)
