"""Engine layer ids: which of a model's hidden layers each row of load statistics is.

Engines disagree on rows: vLLM counts MoE layers only (rows 0..57 for DeepSeek-V3),
TensorRT-LLM keys its counts by the real layer id (3..60), SGLang keeps one row per hidden
layer (61, the three dense ones all zero).  Every reader's rows get the engine's layer ids
here, from the file when it says, else from ``--model``/``--num-layers``/``--first-moe-layer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eplb_core.errors import InvalidInputError
from eplb_core.formats.counts import check_layer_ids


@dataclass(frozen=True)
class ModelPreset:
    """A known model: ``hidden_layers`` (num_hidden_layers), the first ``first_moe_layer``
    of them dense, ``experts`` routed experts in ``groups`` groups."""

    name: str
    hidden_layers: int
    first_moe_layer: int
    experts: int
    groups: int = 1

    @property
    def layer_ids(self) -> list[int]:
        return list(range(self.first_moe_layer, self.hidden_layers))


PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset("deepseek-v3", 61, 3, 256, 8),
        ModelPreset("deepseek-r1", 61, 3, 256, 8),
        ModelPreset("kimi-k2", 61, 1, 384, 1),
        ModelPreset("qwen3-30b-a3b", 48, 0, 128),
        ModelPreset("qwen3-235b-a22b", 94, 0, 128),
        ModelPreset("qwen2-57b-a14b", 28, 0, 64),
        ModelPreset("mixtral-8x7b", 32, 0, 8),
    )
}


def span(ids: Sequence[int]) -> str:
    """``3..60`` for a run of ids, else the first few."""
    if not ids:
        return "none"
    if list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}" if len(ids) > 1 else str(ids[0])
    shown = ", ".join(map(str, ids[:6]))
    return shown + (f", … ({len(ids)} layers)" if len(ids) > 6 else "")


@dataclass(frozen=True)
class LayerRequest:
    """What the user said about the model's layers (all optional)."""

    hidden_layers: int | None = None
    first_moe_layer: int | None = None
    experts: int | None = None
    groups: int | None = None
    source: str = ""  # the flags, for messages: "--model deepseek-v3"

    @classmethod
    def from_flags(
        cls,
        model: str | None = None,
        num_layers: int | None = None,
        first_moe_layer: int | None = None,
        experts: int | None = None,
    ) -> LayerRequest:
        """The request of ``--model``, ``--num-layers``, ``--first-moe-layer``, ``--experts``;
        a flag that contradicts the preset is an error."""
        for flag, value in (("--num-layers", num_layers), ("--experts", experts)):
            if value is not None and value < 1:
                raise InvalidInputError(f"{flag} must be at least 1, got {value}")
        if first_moe_layer is not None and first_moe_layer < 0:
            raise InvalidInputError(f"--first-moe-layer must be >= 0, got {first_moe_layer}")
        if num_layers is not None and first_moe_layer is not None and first_moe_layer >= num_layers:
            raise InvalidInputError(
                f"--first-moe-layer {first_moe_layer} leaves no MoE layer of --num-layers "
                f"{num_layers}"
            )
        flags = [
            f"{flag} {value}"
            for flag, value in (
                ("--num-layers", num_layers),
                ("--first-moe-layer", first_moe_layer),
                ("--experts", experts),
            )
            if value is not None
        ]
        if model is None:
            return cls(num_layers, first_moe_layer, experts, None, " ".join(flags))
        preset = PRESETS.get(model.lower())
        if preset is None:
            raise InvalidInputError(
                f"--model {model} is not a preset; known: {', '.join(sorted(PRESETS))} "
                "(or describe the model with --num-layers, --first-moe-layer, --experts)"
            )
        for flag, given, known in (
            ("--num-layers", num_layers, preset.hidden_layers),
            ("--first-moe-layer", first_moe_layer, preset.first_moe_layer),
            ("--experts", experts, preset.experts),
        ):
            if given is not None and given != known:
                raise InvalidInputError(f"{flag} {given} contradicts --model {model} ({known})")
        return cls(
            preset.hidden_layers,
            preset.first_moe_layer,
            preset.experts,
            preset.groups,
            f"--model {preset.name}",
        )

    @property
    def moe_layers(self) -> int | None:
        """How many MoE layers the request implies, when it does."""
        if self.hidden_layers is not None:
            return self.hidden_layers - (self.first_moe_layer or 0)
        return None

    def layer_ids(self, rows: int) -> list[int] | None:
        """The MoE layer ids the request implies for ``rows`` rows of MoE layers, or None."""
        first = self.first_moe_layer
        if self.hidden_layers is not None and first is not None:
            return list(range(first, self.hidden_layers))
        if first is not None:
            return list(range(first, first + rows))
        if self.hidden_layers is not None and rows == self.hidden_layers:
            return list(range(rows))
        return None


@dataclass(frozen=True)
class ModelLayers:
    """The settled layers of a model: ``layer_ids`` ``[L]`` and ``hidden_layers`` (None when
    unknown); ``assumed`` when nothing said which layers they are (0..L-1 taken)."""

    layer_ids: list[int]
    hidden_layers: int | None
    assumed: bool = False


def resolve_layers(
    windows: np.ndarray,
    file_ids: list[int] | None,
    file_hidden: int | None,
    rows_are_hidden_layers: bool,
    request: LayerRequest,
) -> tuple[np.ndarray, ModelLayers]:
    """Settle the layers of ``windows`` ``[T, R, E]``; return its MoE rows ``[T, L, E]`` and
    their layers.  Where the file and the request both say, they must agree."""
    rows = windows.shape[1]
    hidden = _agreed_hidden(file_hidden, request)
    if rows_are_hidden_layers:
        return _moe_rows_of_hidden(windows, request)
    if file_ids is not None:
        if len(file_ids) != rows:
            raise InvalidInputError(f"it names {len(file_ids)} layer ids for {rows} rows")
        check_layer_ids(file_ids, "its layer ids")
        wanted = request.layer_ids(rows)
        if wanted is not None and wanted != file_ids:
            raise InvalidInputError(
                f"it covers layers {span(file_ids)}, but {request.source} means MoE layers "
                f"{span(wanted)}"
            )
        layers = ModelLayers(file_ids, hidden)
    else:
        wanted = request.layer_ids(rows)
        if wanted is None and hidden == rows:
            wanted = list(range(rows))  # as many MoE layers as hidden layers: all of them
        if wanted is None and hidden is not None:
            raise InvalidInputError(
                f"it has {rows} MoE layers of the model's {hidden}: say which with "
                "--first-moe-layer"
            )
        if wanted is not None and len(wanted) != rows:
            raise InvalidInputError(
                f"it has {rows} MoE layers, but {request.source} means {len(wanted)} "
                f"({span(wanted)})"
            )
        if wanted is None:
            layers = ModelLayers(list(range(rows)), hidden, assumed=True)
        else:
            # --first-moe-layer alone: the MoE layers run to the model's last layer.
            implied = hidden if hidden is not None else wanted[-1] + 1
            layers = ModelLayers(wanted, implied)
    if layers.hidden_layers is not None and layers.layer_ids[-1] >= layers.hidden_layers:
        raise InvalidInputError(
            f"it covers layer {layers.layer_ids[-1]}, but the model has "
            f"{layers.hidden_layers} hidden layers"
        )
    return windows, layers


def _agreed_hidden(file_hidden: int | None, request: LayerRequest) -> int | None:
    if (
        file_hidden is not None
        and request.hidden_layers is not None
        and file_hidden != request.hidden_layers
    ):
        raise InvalidInputError(
            f"it covers {file_hidden} hidden layers, but {request.source} means "
            f"{request.hidden_layers}"
        )
    return file_hidden if file_hidden is not None else request.hidden_layers


def _moe_rows_of_hidden(
    windows: np.ndarray, request: LayerRequest
) -> tuple[np.ndarray, ModelLayers]:
    """Rows are every hidden layer: the MoE ones are those the request names, else those
    that counted tokens (dense layers never route a token to an expert)."""
    rows = windows.shape[1]
    _agreed_hidden(rows, request)
    counted = windows.sum(axis=(0, 2)) > 0
    if request.first_moe_layer is not None:
        ids = list(range(request.first_moe_layer, rows))
        dense_with_tokens = [i for i in range(request.first_moe_layer) if counted[i]]
        if dense_with_tokens:
            raise InvalidInputError(
                f"layer {dense_with_tokens[0]} counted tokens, but {request.source} makes it "
                "a dense layer"
            )
    else:
        ids = [i for i in range(rows) if counted[i]]
        if not ids:
            raise InvalidInputError("no layer counted a token")
    return windows[:, ids], ModelLayers(ids, rows)
