"""``eplb``: plan placements offline and draw reports; with the local tooling installed, also
run a local cluster (``eplb cluster``) and the demo (``eplb demo``)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import typer
from typer import _click as click  # typer 0.29 vendors click: its types, not the package's
from typer.core import TyperGroup

from eplb_operator import __version__
from eplb_operator.cli.plan import plan_command
from eplb_operator.cli.report import report_command

if TYPE_CHECKING:  # importlib.metadata only when plugins are looked up: not for `eplb plan`
    from importlib.metadata import EntryPoint


@cache
def _plugins() -> dict[str, EntryPoint]:
    """Subcommands of other packages (the local tooling's), by name; not loaded yet."""
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group="eplb.commands")}


@cache
def _load_plugin(name: str) -> click.Command | None:
    """The plugin command ``name`` as a click command, or None when its package or its
    dependencies are not installed here."""
    try:
        function = _plugins()[name].load()
    except ImportError:
        return None
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name)(function)
    return typer.main.get_command(single)


class _Commands(TyperGroup):
    """The built-in commands and the plugins', each plugin imported only when it is named
    or the commands are listed: the demo's imports (torch, the reference engine) would
    otherwise be most of a one-shot ``eplb plan``'s time."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        builtin = super().list_commands(ctx)
        return builtin + [name for name in _plugins() if name not in builtin]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _plugins():
            command = _load_plugin(cmd_name)
        return command


app = typer.Typer(
    cls=_Commands,
    name="eplb",
    help="Kubernetes-native expert-parallel load balancing for MoE serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("plan", no_args_is_help=True)(plan_command)
app.command("report")(report_command)


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()
