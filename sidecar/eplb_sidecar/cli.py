"""``eplb-sidecar``: the per-pod data-plane process."""

from __future__ import annotations

import typer

from eplb_sidecar import __version__

app = typer.Typer(
    name="eplb-sidecar",
    help="Per-pod EPLB sidecar: expert load exporter and weight-shuffle control API.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Per-pod EPLB sidecar."""


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(__version__)
