"""``eplb plan``: recorded stats in, a placement out, for GitOps and engine start-up flags."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from eplb_operator.errors import InvalidInputError

if TYPE_CHECKING:  # torch, numba and scipy load only when a plan is computed
    import torch

    from eplb_operator.formats.mappings import PlacementDocument
    from eplb_operator.formats.stats import LoadStats
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


def plan_command(
    stats: Annotated[
        Path, typer.Option(help="Recorded load stats: file, or TensorRT-LLM directory.")
    ],
    ranks: Annotated[int, typer.Option(help="EP ranks (GPUs) in one serving replica.")],
    output: Annotated[Path, typer.Option(help="Where to write the placement.")],
    stats_format: Annotated[
        StatsFormatOption, typer.Option(help="Format of --stats.")
    ] = StatsFormatOption.auto,
    redundant: Annotated[
        int | None, typer.Option(help="Redundant experts (extra slots) per layer.")
    ] = None,
    slots_per_rank: Annotated[
        int | None, typer.Option(help="Physical expert slots per rank.")
    ] = None,
    nodes: Annotated[int, typer.Option(help="Nodes the ranks span.")] = 1,
    groups: Annotated[int, typer.Option(help="Expert groups of the model (DeepSeek: 8).")] = 1,
    mode: Annotated[
        ModeOption,
        typer.Option(help="Placement mode; auto = hierarchical when groups divide over nodes."),
    ] = ModeOption.auto,
    previous: Annotated[
        Path | None,
        typer.Option(help="Placement in service (any output format): keep what can stay."),
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

    try:
        result, doc = _plan(
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
        )
        text = render(doc, output_format.value, name or _default_name(output))
        write_atomically(output, text)
        if plot is not None:
            _plot(result, doc, plot)
    except InvalidInputError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    summary = _summary(result, doc, output, output_format.value)
    if summary_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_table(summary)


def _plan(
    stats_path: Path,
    stats_format: str,
    ranks: int,
    redundant: int | None,
    slots_per_rank: int | None,
    nodes: int,
    groups: int,
    mode: str,
    previous_path: Path | None,
    max_moves: int | None,
    slack: float,
) -> tuple[Plan, PlacementDocument]:
    from eplb_operator.formats.mappings import PlacementDocument
    from eplb_operator.formats.stats import read_stats
    from eplb_operator.placement import PlanOptions, Topology, plan

    if (redundant is None) == (slots_per_rank is None):
        raise InvalidInputError("give exactly one of --redundant and --slots-per-rank")
    stats = read_stats(stats_path, stats_format)  # type: ignore[arg-type]
    if redundant is not None:
        topology = Topology.from_redundant(stats.num_experts, ranks, redundant, nodes, groups)
    else:
        assert slots_per_rank is not None
        topology = Topology(stats.num_experts, ranks, slots_per_rank, nodes, groups)
    previous = _read_previous(previous_path, stats, topology) if previous_path else None
    options = PlanOptions(mode=mode, max_moves=max_moves, slack=slack)  # type: ignore[arg-type]
    result = plan(stats.load, topology, previous=previous, options=options)
    doc = PlacementDocument(
        result.placement,
        stats.layer_ids,
        stats.model,
        topology.num_experts,
        topology.num_ranks,
        topology.slots_per_rank,
        topology.num_groups,
        topology.num_nodes,
    )
    return result, doc


def _read_previous(path: Path, stats: LoadStats, topology: Topology) -> torch.Tensor:
    from eplb_operator.formats.mappings import read_placement, topology_matches
    from eplb_operator.placement.views import validate_placement

    doc = read_placement(path)
    if doc.model and stats.model and doc.model != stats.model:
        raise InvalidInputError(
            f"stats are of model {stats.model!r} but --previous was planned for {doc.model!r}"
        )
    if doc.phy2log.shape[0] != stats.num_layers:
        raise InvalidInputError(
            f"stats have {stats.num_layers} MoE layers but --previous has {doc.phy2log.shape[0]}"
        )
    if doc.layer_ids != stats.layer_ids and doc.layer_ids != list(range(stats.num_layers)):
        raise InvalidInputError("stats and --previous name different layers")
    topology_matches(doc, topology)
    try:
        validate_placement(doc.phy2log, topology)
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None
    return doc.phy2log


def _plot(result: Plan, doc: PlacementDocument, path: Path) -> None:
    from eplb_operator.report.heatmaps import plot_rank_loads

    assert result.load is not None and result.previous is not None and doc.num_ranks
    before = rank_loads_of(result.load, result.previous, doc.num_ranks)
    after = rank_loads_of(result.load, result.placement, doc.num_ranks)
    title = f"{doc.model or 'model'}: {doc.num_ranks} ranks, {result.moves} slots moved"
    plot_rank_loads(before, after, title, path)


def rank_loads_of(load: torch.Tensor, placement: torch.Tensor, ranks: int) -> torch.Tensor:
    from eplb_operator.placement.views import rank_loads

    return rank_loads(load, placement, ranks)


def _default_name(output: Path) -> str:
    stem = output.name.split(".")[0].lower()
    cleaned = "".join(c if c.isalnum() else "-" for c in stem).strip("-")
    return cleaned or "expert-placement"


def _summary(
    result: Plan, doc: PlacementDocument, output: Path, output_format: str
) -> dict[str, Any]:
    return {
        "imbalance_before": result.imbalance_before,
        "imbalance_after": result.imbalance_after,
        "lower_bound": sum(layer.lower_bound for layer in result.layers) / len(result.layers),
        "moves": result.moves,
        "layers_updated": sum(layer.updated for layer in result.layers),
        "compute_seconds": result.compute_seconds,
        "output": str(output),
        "output_format": output_format,
        "model": doc.model,
        "layers": [
            {
                "layer": doc.layer_ids[layer.layer],
                "reason": layer.reason.value,
                "imbalance_before": layer.imbalance_before,
                "imbalance_after": layer.imbalance_after,
                "lower_bound": layer.lower_bound,
                "moves": layer.moves,
            }
            for layer in result.layers
        ],
    }


def _print_table(summary: dict[str, Any]) -> None:
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
