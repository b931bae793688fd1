"""``eplb plan``: recorded stats in, a placement out, for GitOps and engine start-up flags."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from eplb_core.errors import InvalidInputError

if TYPE_CHECKING:  # numpy, numba and scipy load only when a plan is computed (never torch)
    import numpy.typing as npt

    from eplb_core.arrays import FloatArray, IntArray
    from eplb_core.formats.stats import LoadStats
    from eplb_operator.formats.mappings import PlacementDocument
    from eplb_operator.placement import Plan, Topology


class StatsFormatOption(str, Enum):
    auto = "auto"
    sglang = "sglang"
    vllm = "vllm"
    trtllm = "trtllm"
    json = "json"


class ModeOption(str, Enum):
    auto = "auto"
    hierarchical = "hierarchical"
    global_ = "global"


class OutputFormatOption(str, Enum):
    expertplacement = "expertplacement"
    sglang = "sglang"
    trtllm = "trtllm"
    vllm = "vllm"


# Engines that index their file by hidden-layer id: writing for them on guessed ids would
# silently serve one layer with another's placement.
_INDEXED_BY_LAYER_ID = {"sglang": "SGLang", "trtllm": "TensorRT-LLM"}


@dataclass(frozen=True)
class PlanRequest:
    """Every flag of ``eplb plan`` that shapes the plan (the output's path and looks aside)."""

    stats: Path
    stats_format: str
    ranks: int
    redundant: int | None
    slots_per_rank: int | None
    nodes: int
    groups: int | None
    mode: str
    previous: Path | None
    max_moves: int | None
    slack: float
    output_format: str
    model: str | None = None
    num_layers: int | None = None
    first_moe_layer: int | None = None
    experts: int | None = None
    steps: str | None = None
    model_key: str | None = None


def plan_command(
    stats: Annotated[
        Path, typer.Option(help="Recorded load stats: file, or TensorRT-LLM directory.")
    ],
    ranks: Annotated[int, typer.Option(help="EP ranks (GPUs) in one serving replica.")],
    output: Annotated[Path, typer.Option(help="Where to write the placement.")],
    stats_format: Annotated[
        StatsFormatOption, typer.Option(help="Format of --stats (auto: from its content).")
    ] = StatsFormatOption.auto,
    redundant: Annotated[
        int | None, typer.Option(help="Redundant experts (extra slots) per layer.")
    ] = None,
    slots_per_rank: Annotated[
        int | None, typer.Option(help="Physical expert slots per rank.")
    ] = None,
    nodes: Annotated[int, typer.Option(help="Nodes the ranks span.")] = 1,
    groups: Annotated[
        int | None,
        typer.Option(help="Expert groups of the model (DeepSeek: 8; default: --model's, or 1)."),
    ] = None,
    mode: Annotated[
        ModeOption,
        typer.Option(help="Placement mode; auto = hierarchical when groups divide over nodes."),
    ] = ModeOption.auto,
    previous: Annotated[
        Path | None,
        typer.Option(
            help="Placement in service (expertplacement, sglang or trtllm file): keep what can "
            "stay; with TensorRT-LLM per-slot stats, the placement they were counted on."
        ),
    ] = None,
    max_moves: Annotated[
        int | None, typer.Option(min=0, help="Most slots that may change, all layers together.")
    ] = None,
    output_format: Annotated[
        OutputFormatOption, typer.Option(help="Format of --output.")
    ] = OutputFormatOption.expertplacement,
    name: Annotated[
        str | None, typer.Option(help="ExpertPlacement name (default: --output's stem).")
    ] = None,
    slack: Annotated[
        float,
        typer.Option(
            min=0.0, help="Imbalance a migration-aware plan may give up to move fewer slots."
        ),
    ] = 0.01,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model preset (deepseek-v3, deepseek-r1, kimi-k2, qwen3-30b-a3b, "
            "qwen3-235b-a22b, qwen2-57b-a14b, mixtral-8x7b): layers, dense layers, experts, groups."
        ),
    ] = None,
    num_layers: Annotated[
        int | None,
        typer.Option(help="The model's hidden layers (num_hidden_layers), dense ones included."),
    ] = None,
    first_moe_layer: Annotated[
        int | None, typer.Option(help="Engine layer id of the first MoE layer (dense before it).")
    ] = None,
    experts: Annotated[
        int | None, typer.Option(help="The model's routed experts (checks the stats).")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="Keep windows whose step (iteration) is in A:B (A included, B not)."),
    ] = None,
    model_key: Annotated[
        str | None, typer.Option(help="Model to read from vLLM safetensors stats of several.")
    ] = None,
    summary_json: Annotated[
        bool, typer.Option("--summary-json", help="Print one JSON summary on stdout.")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Also write a PNG heatmap of rank load per layer, before and after."),
    ] = None,
) -> None:
    """Compute a placement from recorded stats and write it for GitOps or an engine."""
    from eplb_operator.formats.mappings import render, write_atomically

    request = PlanRequest(
        stats,
        stats_format.value,
        ranks,
        redundant,
        slots_per_rank,
        nodes,
        groups,
        mode.value,
        previous,
        max_moves,
        slack,
        output_format.value,
        model,
        num_layers,
        first_moe_layer,
        experts,
        steps,
        model_key,
    )
    written: list[Path] = []  # removed again if a later step fails: all or nothing
    try:
        result, doc = _plan(request)
        text = render(doc, output_format.value, name or _default_name(output))
        if plot is not None:
            written.append(_plot(result, doc, plot))
            _move(written[0], plot)
            written[0] = plot
        write_atomically(output, text)
    except InvalidInputError as error:
        for path in written:
            path.unlink(missing_ok=True)
        typer.echo(f"error: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(code=2) from None
    summary = _summary(result, doc, output, output_format.value)
    if summary_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_table(summary)


def _plan(request: PlanRequest) -> tuple[Plan[npt.NDArray[Any]], PlacementDocument]:
    import numpy as np

    from eplb_core.formats.layers import LayerRequest
    from eplb_core.formats.stats import ReadOptions, StepWindow, read_stats
    from eplb_operator.formats.expertplacement import check_api_limits
    from eplb_operator.formats.mappings import document_on, read_placement
    from eplb_operator.placement import PlanOptions, Topology, plan

    _load_kernels()

    if (request.redundant is None) == (request.slots_per_rank is None):
        raise InvalidInputError("give exactly one of --redundant and --slots-per-rank")
    layers = LayerRequest.from_flags(
        request.model, request.num_layers, request.first_moe_layer, request.experts
    )
    recorded = read_placement(request.previous) if request.previous else None
    options = ReadOptions(layers, StepWindow.parse(request.steps), request.model_key, recorded)
    stats = read_stats(request.stats, request.stats_format, options)  # type: ignore[arg-type]
    layer_ids, hidden = _layers_of(stats, recorded, request.output_format)
    groups = request.groups or layers.groups or 1
    if request.redundant is not None:
        topology = Topology.from_redundant(
            stats.num_experts, request.ranks, request.redundant, request.nodes, groups
        )
    else:
        assert request.slots_per_rank is not None
        topology = Topology(
            stats.num_experts, request.ranks, request.slots_per_rank, request.nodes, groups
        )
    previous = _previous_rows(recorded, stats, topology, layer_ids) if recorded else None
    doc = document_on(
        np.zeros((len(layer_ids), topology.num_slots), dtype=np.int64), layer_ids, stats.model,
        topology, hidden_layers=hidden, windows=stats.windows, steps=stats.steps,
    )  # fmt: skip
    check_api_limits(doc)  # before the work: sizes an ExpertPlacement could not hold
    settings = PlanOptions(
        mode=request.mode,  # type: ignore[arg-type]
        max_moves=request.max_moves,
        slack=request.slack,
    )
    result = plan(stats.load, topology, previous=previous, options=settings)
    return result, replace(doc, phy2log=result.placement)


def _load_kernels() -> None:
    """The placement kernels compiled ahead of time for this machine, built on the first plan
    (about 20 s, once per version), else numba's: a one-shot process then loads them in
    milliseconds rather than importing numba (``placement.kernels``)."""
    from eplb_operator.placement import kernel_build, kernels
    from eplb_operator.placement.rebalance import warm_up

    status: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if not kernels.module_path().is_file():  # else rich (40 ms) is not even imported
        from rich.console import Console

        status = Console(stderr=True).status("compiling the placement kernels (once)…")
    try:
        with status:
            kernel_build.build()
    except kernel_build.BuildError as error:
        sys.stderr.write(f"eplb plan: placement kernels compiled by numba at run time ({error})\n")
    warm_up()


def _layers_of(
    stats: LoadStats, recorded: PlacementDocument | None, output_format: str
) -> tuple[list[int], int | None]:
    """The engine layer ids of the stats' rows and the model's hidden layers; stats that do not
    name their layers take them from --previous when it does."""
    layer_ids, hidden, assumed = stats.layer_ids, stats.hidden_layers, stats.layer_ids_assumed
    if recorded is not None:
        if recorded.rows_are_hidden_layers:
            if assumed and recorded.hidden_layers == len(layer_ids):  # every layer is MoE
                hidden, assumed = recorded.hidden_layers, False
            if assumed:
                raise InvalidInputError(
                    f"--previous has a row per hidden layer ({recorded.hidden_layers}), the "
                    f"stats {len(layer_ids)} unnamed MoE layers: give --model, or "
                    "--first-moe-layer, to match them"
                )
            if hidden is not None and recorded.hidden_layers != hidden:
                raise InvalidInputError(
                    f"--previous has {recorded.hidden_layers} rows (one per hidden layer), "
                    f"the model {hidden} hidden layers"
                )
            hidden = recorded.hidden_layers
        elif assumed and len(recorded.layer_ids) == len(layer_ids):
            layer_ids, assumed = recorded.layer_ids, False
            hidden = recorded.hidden_layers if recorded.hidden_layers is not None else hidden
    if assumed and output_format in _INDEXED_BY_LAYER_ID and layer_ids != list(range(hidden or 0)):
        raise InvalidInputError(
            f"the {stats.source_format} stats do not say which hidden layers their "
            f"{len(layer_ids)} MoE layers are, and {_INDEXED_BY_LAYER_ID[output_format]} "
            "indexes its file by layer id: give --model, or --num-layers and --first-moe-layer"
        )
    return layer_ids, hidden


def _previous_rows(
    recorded: PlacementDocument, stats: LoadStats, topology: Topology, layer_ids: list[int]
) -> IntArray:
    """``[L, P]``: the placement in service for the stats' layers.  Rows with -1 (unused
    slots) are passed on unchanged: the placement engine decides what they mean."""
    from eplb_operator.formats.mappings import topology_matches
    from eplb_operator.placement.views import validate_placement

    if recorded.model and stats.model and recorded.model != stats.model:
        raise InvalidInputError(
            f"stats are of model {stats.model!r} but --previous was planned for {recorded.model!r}"
        )
    topology_matches(recorded, topology)
    rows = recorded.rows_for(layer_ids, "--previous")
    if int(rows.max()) >= topology.num_experts:
        raise InvalidInputError(
            f"--previous names expert {int(rows.max())}, the stats have {topology.num_experts}"
        )
    if not (rows < 0).any():
        try:
            validate_placement(rows, topology)
        except InvalidInputError as error:
            raise InvalidInputError(f"--previous: {error}") from None
    return rows


def _plot(result: Plan[npt.NDArray[Any]], doc: PlacementDocument, path: Path) -> Path:
    """Draw the heatmap into a temporary file beside ``path``; the caller moves it into place
    once the placement is written (so a failure leaves neither)."""
    from eplb_operator.report.heatmaps import plot_rank_loads

    assert result.load is not None and result.previous is not None and doc.num_ranks
    before = rank_loads_of(result.load, result.previous, doc.num_ranks)
    after = rank_loads_of(result.load, result.placement, doc.num_ranks)
    title = f"{doc.model or 'model'}: {doc.num_ranks} ranks, {result.moves} slots moved"
    temporary = path.with_name(f".{path.stem}.partial.png")
    try:
        plot_rank_loads(before, after, title, temporary)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write {path} ({error.strerror})") from None
    return temporary


def _move(source: Path, target: Path) -> None:
    try:
        source.replace(target)
    except OSError as error:
        raise InvalidInputError(f"cannot write {target} ({error.strerror})") from None


def rank_loads_of(load: FloatArray, placement: IntArray, ranks: int) -> FloatArray:
    from eplb_operator.placement.views import rank_loads

    return rank_loads(load, placement, ranks)


def _default_name(output: Path) -> str:
    stem = output.name.split(".")[0].lower()
    cleaned = "".join(c if c.isalnum() else "-" for c in stem).strip("-")
    return cleaned or "expert-placement"


def _summary(
    result: Plan[npt.NDArray[Any]], doc: PlacementDocument, output: Path, output_format: str
) -> dict[str, Any]:
    """Figures per MoE layer and their means; layers that counted no token (nothing to
    balance, so no imbalance of 1.0 to average in) are listed apart."""
    assert result.load is not None
    counted = [layer for layer in result.layers if float(result.load[layer.layer].sum()) > 0]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return {
        "imbalance_before": mean([layer.imbalance_before for layer in counted]),
        "imbalance_after": mean([layer.imbalance_after for layer in counted]),
        "lower_bound": mean([layer.lower_bound for layer in counted]),
        "moves": result.moves,
        "layers_updated": sum(layer.updated for layer in result.layers),
        "compute_seconds": result.compute_seconds,
        "output": str(output),
        "output_format": output_format,
        "model": doc.model,
        "hidden_layers": doc.hidden_layers,
        "windows": len(doc.steps),
        "layers_without_tokens": [
            doc.layer_ids[layer.layer] for layer in result.layers if layer not in counted
        ],
        "layers": [
            {
                "layer": doc.layer_ids[layer.layer],
                "reason": layer.reason.value,
                "imbalance_before": layer.imbalance_before,
                "imbalance_after": layer.imbalance_after,
                "lower_bound": layer.lower_bound,
                "moves": layer.moves,
            }
            for layer in counted
        ],
    }


def _print_table(summary: dict[str, Any]) -> None:
    # rich costs a one-shot `eplb plan --summary-json` a tenth of its run: only here.
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Placement written to {summary['output']} ({summary['output_format']})")
    for column in ("layer", "decision", "imbalance before", "after", "lower bound", "moves"):
        table.add_column(column, justify="right" if column != "decision" else "left")
    for layer in summary["layers"]:
        table.add_row(
            str(layer["layer"]),
            layer["reason"],
            f"{layer['imbalance_before']:.3f}",
            f"{layer['imbalance_after']:.3f}",
            f"{layer['lower_bound']:.3f}",
            str(layer["moves"]),
        )
    table.add_section()
    table.add_row(
        "mean",
        f"{summary['layers_updated']} updated",
        f"{summary['imbalance_before']:.3f}",
        f"{summary['imbalance_after']:.3f}",
        f"{summary['lower_bound']:.3f}",
        str(summary["moves"]),
    )
    console = Console()
    console.print(table)
    console.print(f"computed in {summary['compute_seconds'] * 1e3:.1f} ms")
