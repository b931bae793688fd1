"""Shared helpers: the engines' runs (one routing per model shape) and ``eplb plan`` run
in-process through its real command-line parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from eplb_operator.cli.main import app
from tests.formats.engines import SHAPES, Routing, route


@pytest.fixture(scope="session")
def routings() -> dict[str, Routing]:
    return {name: route(shape, seed=index) for index, (name, shape) in enumerate(SHAPES.items())}


def run_plan(*args: str | Path) -> Result:
    """``eplb plan ARGS`` as the console script runs it (exit code, stdout, stderr)."""
    return CliRunner().invoke(app, ["plan", *map(str, args)])


def plan_summary(*args: str | Path) -> dict[str, Any]:
    result = run_plan(*args, "--summary-json")
    assert result.exit_code == 0, result.stderr or result.exception
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def assert_rejected(result: Result, message: str, output: Path) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback, nothing written."""
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], lines[0]
    assert not output.exists()
    assert not [p for p in output.parent.glob(f".{output.name}*")], "a temporary file was left"
