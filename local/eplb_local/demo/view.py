"""The demo's live terminal view (rich) and its closing summary table."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from eplb_local.demo.summary import DemoSummary
from eplb_operator.report.recording import RolloutRecord


@dataclass
class DemoState:
    """What the view shows; the scenario writes it, the view only reads."""

    title: str
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    conditions: str = ""
    before: list[float] = field(default_factory=list)  # [L] this phase, before its rollout
    now: list[float] = field(default_factory=list)  # [L] the last few seconds
    after: list[float] = field(default_factory=list)  # [L] this phase, after its rollout
    rollouts: list[RolloutRecord] = field(default_factory=list)
    layers_total: int = 0
    log: deque[str] = field(default_factory=lambda: deque(maxlen=8))


class DemoView:
    def __init__(self, state: DemoState, console: Console) -> None:
        self.state = state
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
        )  # fmt: skip
        self._tasks: dict[int, TaskID] = {}  # index in state.rollouts → progress task

    def say(self, line: str) -> None:
        """A line of the log (printed above the live view, so it scrolls in a terminal)."""
        stamp = time.monotonic() - self.state.started
        self.state.log.append(f"{stamp:5.1f}s  {line}")
        self.console.print(f"[dim]{stamp:5.1f}s[/dim]  {line}", highlight=False)

    def __rich__(self) -> RenderableType:
        state = self.state
        self._sync_progress()
        head = (
            f"[bold]{state.title}[/bold] · phase: [cyan]{state.phase}[/cyan] · "
            f"{time.monotonic() - state.started:.0f} s · {state.conditions}"
        )
        return Panel(
            Group(self._layers(), self.progress),
            title="eplb demo · imbalance per layer = max / mean rank load (1.00 is perfect)",
            subtitle=head,
        )

    def _layers(self) -> Table:
        state = self.state
        table = Table(expand=False)
        table.add_column("layer", justify="right")
        for name in ("before", "now", "after"):
            table.add_column(name, justify="right")
        rows = max(len(state.before), len(state.now), len(state.after))
        for layer in range(rows):
            table.add_row(
                str(layer), *(_cell(values, layer) for values in (state.before, state.now,
                                                                  state.after))
            )  # fmt: skip
        if rows:
            table.add_section()
            table.add_row("mean", *(_mean(v) for v in (state.before, state.now, state.after)))
        return table

    def _sync_progress(self) -> None:
        for index, record in enumerate(self.state.rollouts):
            total = max(self.state.layers_total, record.layers, 1)
            detail = (
                f"{record.batches} batches · prepare {record.prepare_seconds:.2f} s · "
                f"commit {record.commit_seconds:.2f} s · {record.moves} moves · {record.result}"
                + (f" ({record.reason})" if record.reason else "")
            )
            if index not in self._tasks:
                self._tasks[index] = self.progress.add_task(record.revision, total=total,
                                                            detail=detail)  # fmt: skip
            task = self._tasks[index]
            done = record.layers if record.result != "completed" else total
            self.progress.update(task, completed=done, total=total, detail=detail)
            if record.result != "in-progress":
                self.progress.stop_task(task)


def _cell(values: list[float], layer: int) -> str:
    if layer >= len(values):
        return ""
    value = values[layer]
    colour = "green" if value < 1.1 else "yellow" if value < 1.3 else "red"
    return f"[{colour}]{value:.2f}[/{colour}]"


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else ""


def summary_table(summary: DemoSummary) -> Table:
    table = Table(title="eplb demo: summary", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    for phase in summary.phases:
        before = "—" if phase.imbalance_before is None else f"{phase.imbalance_before:.3f}"
        after = "—" if phase.imbalance_after is None else f"{phase.imbalance_after:.3f}"
        table.add_row(f"imbalance, {phase.name}", f"{before} → {after}")
    rows = [
        ("rebalances (rollouts completed)", str(summary.rebalances)),
        ("rollouts aborted", str(summary.aborted)),
        ("layers committed", str(summary.layers_committed)),
        ("expert slots moved", str(summary.moves)),
        ("rollout time", f"{summary.rollout_seconds:.2f} s"),
        ("outputs identical after every rollout", _yes(summary.outputs_identical)),
        ("pods consistent (one placement, exact weights)", _yes(summary.consistent)),
        ("load source", "Prometheus" if summary.prometheus else "direct scrape of sidecars"),
    ]
    if summary.fault is not None:
        rows.append((f"fault {summary.fault.name}", summary.fault.outcome))
    for row in rows:
        table.add_row(*row)
    for problem in summary.problems:
        table.add_row("[red]problem[/red]", problem)
    table.add_row("result", "[green]OK[/green]" if summary.ok else "[red]FAILED[/red]")
    return table


def _yes(value: bool) -> str:
    return "[green]yes[/green]" if value else "[red]no[/red]"
