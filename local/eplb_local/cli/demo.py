"""``eplb demo``: the whole loop on this machine, live, in about a minute."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from eplb_core.errors import InvalidInputError
from eplb_local.demo.options import (
    DemoOptions,
    Engine,
    Fault,
    Model,
    PrometheusMode,
    ServingWorkload,
)


def demo_command(
    pods: Annotated[int, typer.Option(help="Pods of engine(s) + sidecar.")] = 4,
    ranks_per_pod: Annotated[
        int, typer.Option(help="EP ranks per pod: an engine process each, one sidecar.")
    ] = 1,
    workload: Annotated[
        ServingWorkload,
        typer.Option(
            help="What makes the pods: a StatefulSet, or a LeaderWorkerSet group "
            "(the real LWS controller); each pod's index comes from it."
        ),
    ] = ServingWorkload.statefulset,
    layers: Annotated[int, typer.Option(help="MoE layers of the reference model.")] = 8,
    experts: Annotated[int, typer.Option(help="Logical experts per layer.")] = 16,
    redundant: Annotated[int, typer.Option(help="Redundant experts (extra slots) per layer.")] = 4,
    duration: Annotated[
        int, typer.Option(help="Seconds of the operator's load window (≥ 10); sets the pace.")
    ] = 10,
    prometheus: Annotated[
        PrometheusMode,
        typer.Option(help="Real Prometheus: auto = when the binary is on PATH."),
    ] = PrometheusMode.auto,
    fault: Annotated[Fault | None, typer.Option(help="Inject one fault.")] = None,
    engine: Annotated[
        Engine, typer.Option(help="The reference MoE, or a Hugging Face MoE model (--model).")
    ] = Engine.reference,
    model: Annotated[
        Model | None,
        typer.Option(help="Architecture of --engine transformers (tiny, random weights)."),
    ] = None,
    shift: Annotated[
        bool, typer.Option(help="After the first rebalance, shift the skew and rebalance again.")
    ] = True,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Write the HTML report and PNGs into this directory.")
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Logs, tables and the recording (eplb report --demo reads it).")
    ] = Path(".eplb-demo"),
) -> None:
    """Run an API server, pods, Prometheus and the operator locally; rebalance skewed load."""
    try:
        options = DemoOptions(
            pods=pods, layers=layers, experts=experts, redundant=redundant,
            duration=duration, prometheus=prometheus, fault=fault, shift=shift,
            engine=engine, model=model, ranks_per_pod=ranks_per_pod, workload=workload,
        )  # fmt: skip
    except InvalidInputError as error:
        _fail(str(error))
    # Only now: torch, the reference engine and matplotlib take seconds to import, and a bad
    # flag is answered without them.
    from eplb_local.demo.scenario import Demo
    from eplb_local.demo.view import DemoState, DemoView, summary_table
    from eplb_operator.report.recording import Recording
    from eplb_operator.report.render import render

    console = Console(stderr=json_output)
    per_pod = f" × {ranks_per_pod} ranks" if ranks_per_pod > 1 else ""
    state = DemoState(title=f"{pods} pods{per_pod} · {layers} layers · "
                      f"{experts}+{redundant} experts"
                      + (f" · {model.value}" if model else "")
                      + (" · LeaderWorkerSet" if workload is ServingWorkload.leaderworkerset
                         else "")
                      + (f" · fault {fault.value}" if fault else ""))  # fmt: skip
    view = DemoView(state, console)
    workdir = workdir.resolve()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM ends the demo like Ctrl-C: every child is stopped

    signal.signal(signal.SIGTERM, interrupted)
    try:
        with Live(view, console=console, refresh_per_second=4, transient=True):
            summary = Demo(options, workdir, view).run()
    except InvalidInputError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        console.print("interrupted: every process the demo started is stopped")
        raise typer.Exit(130) from None
    (workdir / "summary.json").write_text(summary.model_dump_json(indent=2))
    console.print(summary_table(summary))
    if report is not None:
        files = render(Recording.load(workdir), report)
        console.print(f"report: {files.html} ({', '.join(p.name for p in files.images)})")
    console.print(f"logs, recording and summary: {workdir}")
    if json_output:
        sys.stdout.write(summary.model_dump_json() + "\n")
    if not summary.ok:
        raise typer.Exit(1)


def _fail(message: str) -> None:
    typer.echo(f"eplb demo: {message}", err=True)
    raise typer.Exit(2)
