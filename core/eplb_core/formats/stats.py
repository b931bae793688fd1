"""Read recorded per-expert load statistics, whatever engine wrote them.

Formats, told apart by content (never by file name):
- ``vllm``: vLLM's offline EPLB stats, JSONL or safetensors (``formats.vllm``);
- ``sglang``: the expert-distribution recorder's dump, or ``{"logical_count": ...}`` JSON
  (``formats.sglang``);
- ``trtllm``: TensorRT-LLM's expert-statistic directory (``formats.trtllm``);
- ``json``: this project's ``{"num_layers", "num_experts", "windows": [T][L][E]}``, optionally
  with ``"model"``, ``"layer_ids"`` ``[L]`` and ``"hidden_layers"``.

Every reader's rows get the engine's layer ids (``formats.layers``), and every count is
checked (``formats.counts``) before a plan sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from eplb_core.errors import InvalidInputError
from eplb_core.formats import sglang, trtllm, vllm
from eplb_core.formats.counts import (
    MAX_COUNT,
    count_array,
    is_integer,
    layer_id_list,
    one_line,
)
from eplb_core.formats.document import PlacementDocument
from eplb_core.formats.layers import LayerRequest, resolve_layers
from eplb_core.formats.loadstats import LoadStats, RawStats, StepWindow, select_windows

__all__ = ["LoadStats", "ReadOptions", "StatsFormat", "StepWindow", "detect", "read_stats"]

StatsFormat = Literal["auto", "sglang", "vllm", "trtllm", "json"]


@dataclass(frozen=True)
class ReadOptions:
    """What the user said beyond the file: the model's layers, the steps to keep, the model
    of a multi-model file, and the placement in force while recording (to fold per-slot
    counts of TensorRT-LLM's balancer)."""

    layers: LayerRequest = field(default_factory=LayerRequest)
    steps: StepWindow = field(default_factory=StepWindow)
    model_key: str | None = None
    recorded: PlacementDocument | None = None


def read_stats(
    path: Path, fmt: StatsFormat = "auto", options: ReadOptions | None = None
) -> LoadStats:
    """Load ``path`` as ``fmt``; raise InvalidInputError naming the file and the problem."""
    options = options or ReadOptions()
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or directory")
    resolved: str = fmt
    try:
        resolved = detect(path) if fmt == "auto" else fmt
        raw = _read(path, resolved, options)
        return _settle(raw, options)
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise InvalidInputError(
            f"{path}: not readable as {resolved} stats ({one_line(error)})"
        ) from None


def detect(path: Path) -> str:
    """The format of ``path``, from what it holds."""
    if path.is_dir():
        return "trtllm"
    with path.open("rb") as file:
        head = file.read(16)
    if sglang.is_torch_file(head):
        return "sglang"
    if vllm.is_safetensors(head, path.stat().st_size):
        return "vllm"
    try:
        with path.open(encoding="utf-8") as file:  # the first record only: JSONL can be large
            first_line = next((line for line in file if line.strip()), "")
        if vllm.is_stats_jsonl(first_line):
            return "vllm"
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"not a stats file this tool knows ({one_line(error)})") from None
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidInputError(
            f"not a stats file this tool knows (not JSON: {one_line(error)})"
        ) from None
    if isinstance(document, dict) and "logical_count" in document:
        return "sglang"
    if isinstance(document, dict) and "windows" in document:
        return "json"
    if isinstance(document, dict) and sglang.MAP_KEY in document:
        raise InvalidInputError("a placement (SGLang's map), not load statistics: use --previous")
    raise InvalidInputError(
        "not a stats file this tool knows: JSON with neither 'windows' (eplb) nor "
        "'logical_count' (SGLang), nor vLLM's eplb_load_meta/eplb_load_stats records"
    )


def _read(path: Path, fmt: str, options: ReadOptions) -> RawStats:
    if fmt == "vllm":
        return vllm.read_vllm(path, options.steps, options.layers, options.model_key)
    if options.model_key is not None:
        raise InvalidInputError("--model-key picks a model of vLLM's safetensors stats only")
    if fmt == "trtllm":
        if not path.is_dir():
            raise InvalidInputError(
                "TensorRT-LLM statistics are a directory (EXPERT_STATISTIC_PATH)"
            )
        return trtllm.read_trtllm(path, options.steps, options.layers.experts, options.recorded)
    if path.is_dir():
        raise InvalidInputError(f"a directory, not {fmt} stats")
    raw = sglang.read_sglang(path) if fmt == "sglang" else _read_json(path)
    windows, steps = select_windows(raw.windows, raw.steps, options.steps)
    return RawStats(
        windows,
        steps,
        raw.source_format,
        raw.model,
        raw.layer_ids,
        raw.hidden_layers,
        raw.rows_are_hidden_layers,
    )


def _read_json(path: Path) -> RawStats:
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or "windows" not in document:
        raise InvalidInputError("this project's stats are a JSON object with 'windows'")
    windows = count_array(document["windows"], "'windows'", ("window", "layer", "expert"))
    if windows.ndim == 2:
        windows = windows[None]
    if windows.ndim != 3:
        raise InvalidInputError(
            f"'windows' must be [layers][experts] or [windows][layers][experts], "
            f"got {windows.ndim} dimensions"
        )
    for key, axis in (("num_layers", 1), ("num_experts", 2)):
        value = document.get(key)
        if value is not None and value != windows.shape[axis]:
            raise InvalidInputError(
                f"{key} is {value} but windows have {windows.shape[axis]} "
                f"{'layers' if axis == 1 else 'experts'}"
            )
    model: Any = document.get("model")
    if model is None and isinstance(document.get("source"), dict):
        model = document["source"].get("model")
    raw_ids = document.get("layer_ids")
    hidden = document.get("hidden_layers")
    if hidden is not None and not is_integer(hidden, 1):
        raise InvalidInputError(f"hidden_layers must be a positive integer, got {hidden!r}")
    return RawStats(
        windows,
        tuple(range(windows.shape[0])),
        "json",
        model if isinstance(model, str) else None,
        None if raw_ids is None else layer_id_list(raw_ids, "layer_ids"),
        hidden,
    )


def _settle(raw: RawStats, options: ReadOptions) -> LoadStats:
    """Layer ids for the rows, then the checks every format shares."""
    windows, layers = resolve_layers(
        raw.windows, raw.layer_ids, raw.hidden_layers, raw.rows_are_hidden_layers, options.layers
    )
    experts = options.layers.experts
    if experts is not None and windows.shape[2] != experts:
        raise InvalidInputError(
            f"it counts {windows.shape[2]} experts per layer, but {options.layers.source} "
            f"has {experts}"
        )
    total = windows.sum(axis=0)
    if total.max() > MAX_COUNT:
        raise InvalidInputError("its counts add up beyond 2**53 tokens per expert")
    if total.sum() == 0:
        raise InvalidInputError(f"no tokens were counted (steps {options.steps})")
    return LoadStats(
        windows.copy(),
        layers.layer_ids,
        raw.model,
        raw.source_format,
        layers.hidden_layers,
        raw.steps,
        layers.assumed,
    )
