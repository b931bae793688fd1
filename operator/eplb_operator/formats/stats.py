"""Read recorded per-expert load statistics, whatever engine wrote them.

Formats:
- ``json``: this project's ``{"num_layers", "num_experts", "windows": [T][L][E]}``
  (optionally ``"model"`` and ``"layer_ids"``);
- ``sglang``: the expert-distribution recorder's ``{"logical_count": [L][E] or [T][L][E]}``,
  as ``.json`` or a ``torch.save``d ``.pt``;
- ``vllm``: offline EPLB load stats, a safetensors file whose one key is the model name and
  whose tensor is ``[L, E]`` float32;
- ``trtllm``: TensorRT-LLM's expert-statistic directory: ``meta_info.json`` plus
  ``rank*.safetensors`` files of ``"{iteration}_{layer}"`` → ``[E]`` counts, summed over ranks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from eplb_operator.errors import InvalidInputError

StatsFormat = Literal["auto", "sglang", "vllm", "trtllm", "json"]


@dataclass(frozen=True)
class LoadStats:
    """Token counts per logical expert: ``windows`` ``[T, L, E]`` float64, ``T`` time windows."""

    windows: torch.Tensor
    layer_ids: list[int]  # the model's index of each layer row (TensorRT-LLM skips dense layers)
    model: str | None
    source_format: str

    @property
    def load(self) -> torch.Tensor:
        """``[L, E]``: the windows summed."""
        return self.windows.sum(dim=0)

    @property
    def num_layers(self) -> int:
        return int(self.windows.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.windows.shape[2])


def read_stats(path: Path, fmt: StatsFormat = "auto") -> LoadStats:
    """Load ``path`` as ``fmt``; raise InvalidInputError naming the file and the problem."""
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or directory")
    resolved = _detect(path) if fmt == "auto" else fmt
    reader = {
        "json": _read_json,
        "sglang": _read_sglang,
        "vllm": _read_vllm,
        "trtllm": _read_trtllm,
    }[resolved]
    try:
        stats = reader(path)
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise InvalidInputError(f"{path}: not readable as {resolved} stats ({error})") from None
    _check_counts(path, stats.windows)
    return stats


def _detect(path: Path) -> str:
    if path.is_dir():
        return "trtllm"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "vllm"
    if suffix == ".pt":
        return "sglang"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"{path}: not a stats file this tool knows ({error})") from None
    if isinstance(document, dict) and "logical_count" in document:
        return "sglang"
    if isinstance(document, dict) and "windows" in document:
        return "json"
    raise InvalidInputError(
        f"{path}: JSON with neither 'windows' (eplb) nor 'logical_count' (SGLang)"
    )


def _as_windows(values: Any, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.double()
    else:
        try:
            tensor = torch.tensor(values, dtype=torch.float64)
        except (TypeError, ValueError) as error:  # ragged or non-numeric lists
            raise InvalidInputError(f"{what} is not a regular numeric array ({error})") from None
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise InvalidInputError(
            f"{what} must be [layers][experts] or [windows][layers][experts], "
            f"got {tensor.dim()} dimensions"
        )
    if 0 in tensor.shape:
        raise InvalidInputError(f"{what} is empty (shape {list(tensor.shape)})")
    return tensor


def _read_json(path: Path) -> LoadStats:
    document = json.loads(path.read_text())
    windows = _as_windows(document["windows"], "'windows'")
    num_layers, num_experts = document.get("num_layers"), document.get("num_experts")
    if num_layers is not None and num_layers != windows.shape[1]:
        raise InvalidInputError(
            f"num_layers is {num_layers} but windows have {windows.shape[1]} layers"
        )
    if num_experts is not None and num_experts != windows.shape[2]:
        raise InvalidInputError(
            f"num_experts is {num_experts} but windows have {windows.shape[2]} experts"
        )
    model = document.get("model")
    if model is None and isinstance(document.get("source"), dict):
        model = document["source"].get("model")
    layer_ids = document.get("layer_ids") or list(range(windows.shape[1]))
    return LoadStats(windows, _check_layer_ids(layer_ids, windows.shape[1]), model, "json")


def _read_sglang(path: Path) -> LoadStats:
    if path.suffix.lower() == ".pt":
        document = torch.load(path, map_location="cpu", weights_only=True)
    else:
        document = json.loads(path.read_text())
    if not isinstance(document, dict) or "logical_count" not in document:
        raise InvalidInputError("no 'logical_count' in SGLang stats")
    windows = _as_windows(document["logical_count"], "'logical_count'")
    return LoadStats(windows, list(range(windows.shape[1])), None, "sglang")


def _read_vllm(path: Path) -> LoadStats:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if len(tensors) != 1:
        raise InvalidInputError(
            f"vLLM load stats hold one tensor keyed by model name; found {sorted(tensors)}"
        )
    ((model, load),) = tensors.items()
    if load.dim() != 2:
        raise InvalidInputError(
            f"vLLM load stats must be [layers, experts], got {list(load.shape)}"
        )
    windows = _as_windows(load, f"tensor '{model}'")
    return LoadStats(windows, list(range(windows.shape[1])), model, "vllm")


_TRTLLM_KEY = re.compile(r"^(\d+)_(\d+)$")


def _read_trtllm(path: Path) -> LoadStats:
    from safetensors.torch import load_file

    if not (path / "meta_info.json").exists():
        raise InvalidInputError("TensorRT-LLM statistics need meta_info.json in the directory")
    meta = json.loads((path / "meta_info.json").read_text())
    files = sorted(path.glob("rank*.safetensors"))
    files = [f for f in files if not f.name.endswith("_raw.safetensors")]
    if not files:
        raise InvalidInputError("no rank*.safetensors files")
    totals: dict[tuple[int, int], torch.Tensor] = {}
    for file in files:
        for key, counts in load_file(str(file)).items():
            match = _TRTLLM_KEY.match(key)
            if match is None:
                raise InvalidInputError(f"{file.name}: key {key!r} is not '<iteration>_<layer>'")
            index = (int(match[1]), int(match[2]))
            totals[index] = (
                totals.get(index, torch.zeros_like(counts, dtype=torch.float64)) + counts.double()
            )
    iterations = sorted({i for i, _ in totals})
    layers = sorted({layer for _, layer in totals})
    missing = [(i, layer) for i in iterations for layer in layers if (i, layer) not in totals]
    if missing:
        raise InvalidInputError(
            f"iteration {missing[0][0]} has no counts for layer {missing[0][1]}"
        )
    windows = torch.stack(
        [torch.stack([totals[(i, layer)] for layer in layers]) for i in iterations]
    )
    num_experts = meta.get("num_experts")
    if num_experts is not None and num_experts != windows.shape[2]:
        raise InvalidInputError(
            f"meta_info says {num_experts} experts, counts have {windows.shape[2]}"
        )
    return LoadStats(_as_windows(windows, "counts"), layers, meta.get("model"), "trtllm")


def _check_layer_ids(layer_ids: Any, num_layers: int) -> list[int]:
    if (
        not isinstance(layer_ids, list)
        or len(layer_ids) != num_layers
        or len(set(layer_ids)) != num_layers
    ):
        raise InvalidInputError(f"layer_ids must list {num_layers} distinct layer indices")
    return [int(i) for i in layer_ids]


def _check_counts(path: Path, windows: torch.Tensor) -> None:
    if not torch.isfinite(windows).all():
        raise InvalidInputError(f"{path}: counts contain NaN or infinity")
    if (windows < 0).any():
        window, layer, expert = (int(v) for v in (windows < 0).nonzero()[0])
        raise InvalidInputError(
            f"{path}: negative count at window {window}, layer {layer}, expert {expert}"
        )
