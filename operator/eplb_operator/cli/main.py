"""``eplb``: plan placements offline and draw reports; with the local tooling installed, also
run a local cluster (``eplb cluster``) and the demo (``eplb demo``)."""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from eplb_operator import __version__
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
app.command("report")(report_command)
# Subcommands of other packages (the local tooling's), loaded only when installed.
for command in entry_points(group="eplb.commands"):
    try:
        app.command(command.name)(command.load())
    except ImportError:  # its package or its dependencies are not installed here
        continue


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()
