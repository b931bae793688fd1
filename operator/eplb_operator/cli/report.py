"""``eplb report``: heatmaps and timelines of expert load, as PNGs and one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eplb_core.errors import InvalidInputError


def report_command(
    output: Annotated[Path, typer.Option(help="Directory for report.html and the PNGs.")] = Path(
        "out/report"
    ),
    demo: Annotated[
        Path | None,
        typer.Option(help="A demo's work directory, running or finished (default .eplb-demo)."),
    ] = None,
    prometheus: Annotated[
        str | None, typer.Option(help="Prometheus URL: report on a cluster instead of a demo.")
    ] = None,
    placement: Annotated[
        str | None,
        typer.Option(help="The ExpertPlacement, NAME or NAMESPACE/NAME (with --prometheus)."),
    ] = None,
    since: Annotated[
        float, typer.Option(min=1, help="Seconds of history to draw (with --prometheus).")
    ] = 3600,
    step: Annotated[
        float, typer.Option(min=1, help="Seconds per sample, at least twice the scrape interval.")
    ] = 30,
) -> None:
    """Draw load per rank × layer before/after, imbalance over time and moves per rollout.

    From a demo (``--demo``), or from a cluster (``--prometheus URL --placement NS/NAME``,
    the Kubernetes API as KUBECONFIG or the service account says).
    """
    from eplb_operator.report.recording import Recording
    from eplb_operator.report.render import render

    try:
        if prometheus is not None or placement is not None:
            if prometheus is None or placement is None:
                raise InvalidInputError("--prometheus and --placement go together")
            if demo is not None:
                raise InvalidInputError("use --demo or --prometheus, not both")
            from eplb_operator.report.prometheus_source import recording_from_cluster

            namespace, _, name = placement.rpartition("/")
            recording = recording_from_cluster(
                prometheus, namespace or "default", name, since, step
            )
        else:
            recording = Recording.load(demo or Path(".eplb-demo"))
        files = render(recording, output)
    except InvalidInputError as error:
        typer.echo(f"eplb report: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{files.html}")
    for image in files.images:
        typer.echo(f"{image}")
