"""``eplb``: plan placements offline, run the local demo, draw reports, serve a local API."""

from __future__ import annotations

import typer

from eplb_operator import __version__
from eplb_operator.cli.cluster import cluster_command
from eplb_operator.cli.demo import demo_command
from eplb_operator.cli.plan import plan_command
from eplb_operator.cli.report import report_command

app = typer.Typer(
    name="eplb",
    help="Kubernetes-native expert-parallel load balancing for MoE serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("plan", no_args_is_help=True)(plan_command)
app.command("cluster")(cluster_command)
app.command("demo")(demo_command)
app.command("report")(report_command)


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()
