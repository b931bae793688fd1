"""vLLM's offline EPLB files: load statistics in (JSONL or safetensors) and out (JSONL).

JSONL (vLLM PR #41141, ``eplb_config.write_stats_path`` writes it, ``read_stats_path``
reads it at start-up and ``tools/eplb/generate_static_mapping.py`` plans from it):

- current revision: one ``{"record_type": "eplb_load_meta", "version": 1, "model",
  "num_ranks", "num_groups", "num_nodes", "num_layers", "num_redundant_experts"}`` line, then
  one ``{"record_type": "eplb_load_stats", "version": 1, "step", "expert_load": [L][P],
  "p2l_map": [L][P]}`` line per EPLB step;
- earlier revision (``expert_load_stats_path``): no meta line, each stats record carries
  ``model``, ``num_ranks`` and ``num_layers`` itself.

``expert_load`` counts tokens per *physical* slot and ``p2l_map`` is the placement in force
at that step: each record folds to logical experts with its own map.  L counts MoE layers
only; the file never names them.

safetensors (vLLM PR #26176, unmerged: ``EPLBConfig.save_path``): one ``[L, E]`` float32
logical load per model, keyed by model name (the main model and its drafter side by side),
metadata ``{"version": "1"}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from eplb_core.errors import InvalidInputError
from eplb_core.formats.counts import count_array, fold_slots, id_array, is_integer, one_line
from eplb_core.formats.document import PlacementDocument
from eplb_core.formats.layers import LayerRequest
from eplb_core.formats.loadstats import RawStats, StepWindow, WindowAccumulator

META = "eplb_load_meta"
STATS = "eplb_load_stats"
VERSION = 1


def is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header = int.from_bytes(head[:8], "little")
    return 2 <= header <= size - 8


def is_stats_jsonl(first_line: str) -> bool:
    """vLLM's JSONL: the first record has a record_type of the EPLB stats."""
    try:
        record = json.loads(first_line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("record_type") in (META, STATS)


def read_vllm(
    path: Path, steps: StepWindow, request: LayerRequest, model_key: str | None
) -> RawStats:
    """Either of vLLM's stats files (told apart by content)."""
    with path.open("rb") as file:
        head = file.read(16)
    if is_safetensors(head, path.stat().st_size):
        return _read_safetensors(path, request, model_key)
    if model_key is not None:
        raise InvalidInputError("--model-key picks a model of a safetensors file; this is JSONL")
    return _read_jsonl(path, steps)


def _read_jsonl(path: Path, steps: StepWindow) -> RawStats:
    accumulator = WindowAccumulator(steps)
    meta: dict[str, Any] | None = None
    shape: tuple[int, int] | None = None  # (L, P) of every record
    num_experts: int | None = None
    model: str | None = None
    with path.open(encoding="utf-8", errors="strict") as file:
        for line_no, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise InvalidInputError(
                    f"line {line_no} is not JSON ({one_line(error)}): truncated?"
                ) from None
            if not isinstance(record, dict):
                raise InvalidInputError(f"line {line_no} is not a record (a JSON object)")
            kind = record.get("record_type")
            try:
                if kind == META:
                    if meta is not None:
                        raise InvalidInputError(f"a second {META}")
                    if shape is not None:
                        raise InvalidInputError(f"{META} after {STATS} records")
                    meta = _check_meta(record)
                    model = meta.get("model")
                    continue
                if kind != STATS:
                    raise InvalidInputError(f"unexpected record_type {kind!r}")
                if meta is None and "num_ranks" not in record:
                    raise InvalidInputError(f"{STATS} before {META}")
                step, slot_load, p2l = _stats_record(record)
                if shape is None:
                    shape = slot_load.shape
                    layers = meta["num_layers"] if meta else record.get("num_layers")
                    if layers is not None and layers != shape[0]:
                        raise InvalidInputError(
                            f"expert_load has {shape[0]} layers, num_layers says {layers}"
                        )
                    if meta is not None:
                        num_experts = shape[1] - meta["num_redundant_experts"]
                        if num_experts < 1:
                            raise InvalidInputError(
                                f"{shape[1]} slots cannot hold num_redundant_experts "
                                f"{meta['num_redundant_experts']} and an expert"
                            )
                    else:
                        num_experts = int(p2l.max()) + 1
                        model = (
                            record.get("model") if isinstance(record.get("model"), str) else None
                        )
                elif slot_load.shape != shape:
                    raise InvalidInputError(
                        f"expert_load has shape {list(slot_load.shape)}, earlier records "
                        f"{list(shape)}"
                    )
                assert num_experts is not None
                accumulator.add(step, fold_slots(slot_load, p2l, num_experts))
            except InvalidInputError as error:
                raise InvalidInputError(f"line {line_no}: {error}") from None
    if meta is not None and shape is None:
        raise InvalidInputError(f"it has {META} but no {STATS} records")
    windows, labels = accumulator.result()
    return RawStats(windows, labels, "vllm", model if isinstance(model, str) else None)


def _check_meta(record: dict[str, Any]) -> dict[str, Any]:
    if record.get("version") != VERSION:
        raise InvalidInputError(
            f"{META} version {record.get('version')!r} is not known (this tool reads {VERSION})"
        )
    for key, minimum in (
        ("num_layers", 1),
        ("num_redundant_experts", 0),
        ("num_ranks", 1),
        ("num_groups", 1),
        ("num_nodes", 1),
    ):
        value = record.get(key)
        if not is_integer(value, minimum):
            raise InvalidInputError(f"{META} {key} must be an integer >= {minimum}, got {value!r}")
    if record.get("model") is not None and not isinstance(record["model"], str):
        raise InvalidInputError(f"{META} model must be a string")
    return record


def _stats_record(record: dict[str, Any]) -> tuple[int, np.ndarray, np.ndarray]:
    step = record.get("step")
    if not is_integer(step):
        raise InvalidInputError(f"{STATS} step must be an integer, got {step!r}")
    if "expert_load" not in record or "p2l_map" not in record:
        raise InvalidInputError(f"{STATS} needs expert_load and p2l_map")
    slot_load = count_array(record["expert_load"], "expert_load", ("layer", "slot"))
    p2l = id_array(record["p2l_map"], "p2l_map", dims=2)
    if slot_load.ndim != 2 or slot_load.shape != p2l.shape:
        raise InvalidInputError(
            f"expert_load {list(slot_load.shape)} and p2l_map {list(p2l.shape)} must both be "
            "[layers][slots]"
        )
    return step, slot_load, p2l


def _read_safetensors(path: Path, request: LayerRequest, model_key: str | None) -> RawStats:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise InvalidInputError(f"not a readable safetensors file ({one_line(error)})") from None
    if metadata.get("version", "1") != "1":
        raise InvalidInputError(f"safetensors version {metadata['version']!r} is not known")
    if not tensors:
        raise InvalidInputError("the safetensors file holds no tensor")
    shapes = ", ".join(f"{key!r} {list(t.shape)}" for key, t in sorted(tensors.items()))
    if model_key is not None:
        if model_key not in tensors:
            raise InvalidInputError(f"--model-key {model_key!r} is not in it: it holds {shapes}")
        chosen = model_key
    elif len(tensors) == 1:
        (chosen,) = tensors
    else:
        fitting = [key for key, t in tensors.items() if _fits(list(t.shape), request)]
        if len(fitting) != 1:
            raise InvalidInputError(
                f"it holds {len(tensors)} models ({shapes}): pick one with --model-key"
                + ("" if request.moe_layers or request.experts else " or --model")
            )
        (chosen,) = fitting
    load = tensors[chosen]
    if load.dim() != 2:
        raise InvalidInputError(f"{chosen!r} must be [layers, experts], got {list(load.shape)}")
    windows = count_array(load.unsqueeze(0), f"tensor {chosen!r}", ("window", "layer", "expert"))
    return RawStats(windows, (0,), "vllm", chosen)


def _fits(shape: list[int], request: LayerRequest) -> bool:
    if len(shape) != 2:
        return False
    layers_fit = request.moe_layers is None or shape[0] == request.moe_layers
    experts_fit = request.experts is None or shape[1] == request.experts
    return layers_fit and experts_fit and (request.moe_layers or request.experts) is not None


def render_stats(doc: PlacementDocument) -> str:
    """vLLM ``read_stats_path`` JSONL: the meta line, then one record per window of the load
    the placement was planned from, each window's tokens per expert spread over that expert's
    slots in the planned placement (which is the record's ``p2l_map``), so vLLM's fold
    recovers the fleet-wide counts exactly."""
    if doc.windows is None:
        raise InvalidInputError("vLLM stats need the load the placement was planned from")
    if doc.num_ranks is None:
        raise InvalidInputError("vLLM stats need the number of ranks")
    phy2log = doc.phy2log.astype(np.int64)
    if (phy2log < 0).any():
        raise InvalidInputError("vLLM stats need every slot used (no -1)")
    num_layers, num_slots = phy2log.shape
    num_experts = doc.experts_named
    counts = np.rint(doc.windows.astype(np.float64)).astype(np.int64)  # [T, L, E]
    replicas = np.zeros((num_layers, num_experts), dtype=np.int64)
    np.add.at(replicas, (np.arange(num_layers)[:, None], phy2log), 1)
    # k[l, p]: which replica of its expert slot p is (0 for the first slot holding it).
    order = np.argsort(phy2log, axis=1, kind="stable")
    starts = np.cumsum(replicas, axis=1) - replicas
    position = np.arange(num_slots)[None, :] - np.take_along_axis(
        starts, np.take_along_axis(phy2log, order, axis=1), axis=1
    )
    replica_index = np.empty_like(phy2log)
    np.put_along_axis(replica_index, order, position, axis=1)
    per_slot = np.take_along_axis(
        counts, np.broadcast_to(phy2log, counts.shape[:1] + phy2log.shape), axis=2
    )
    slot_replicas = np.take_along_axis(replicas, phy2log, axis=1)
    slot_load = per_slot // slot_replicas + (replica_index < per_slot % slot_replicas)
    steps = doc.steps or tuple(range(counts.shape[0]))
    meta = {
        "record_type": META,
        "version": VERSION,
        "model": doc.model,
        "num_ranks": doc.num_ranks,
        "num_groups": doc.num_groups or 1,
        "num_nodes": doc.num_nodes or 1,
        "num_layers": num_layers,
        "num_redundant_experts": num_slots - num_experts,
    }
    p2l = phy2log.tolist()
    lines = [json.dumps(meta)]
    for step, window in zip(steps, slot_load, strict=True):
        record = {
            "record_type": STATS,
            "version": VERSION,
            "step": int(step),
            "expert_load": window.tolist(),
            "p2l_map": p2l,
        }
        lines.append(json.dumps(record, separators=(",", ":")))
    return "\n".join(lines) + "\n"
