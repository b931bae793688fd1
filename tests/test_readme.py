"""The README's quick start is the contract with a new user: exactly two commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    for command in commands:
        script = REPO / command.split()[-1]
        assert script.exists(), f"{command}: {script} is missing"


def test_ci_runs_the_readme_test_command_unchanged() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    test_command = quick_start_commands()[1]
    assert any(line.strip() == test_command for line in ci.splitlines())


def checkout_copy(destination: Path) -> Path:
    """The repository's files as a fresh clone has them (plus uncommitted, unignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.mark.slow
def test_the_readme_commands_work_as_written_in_a_fresh_checkout(tmp_path: Path) -> None:
    """What a new user types: the first sets up a fresh .venv and runs the whole demo; the
    second lints, type-checks and tests that checkout (CI runs all of it; here pytest is
    limited to this file's quick checks, through PYTEST_ADDOPTS, or it would recurse)."""
    checkout = checkout_copy(tmp_path / "checkout")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not p.startswith(str(REPO)))
    result = subprocess.run(
        quick_start_commands()[0], shell=True, cwd=checkout, env=env,
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert (checkout / ".venv" / "bin" / "eplb").exists()  # set up by the command itself
    summary = json.loads((checkout / ".eplb-demo" / "summary.json").read_text())
    assert summary["ok"], summary["problems"]
    assert summary["outputs_identical"] and summary["consistent"]
    assert summary["rebalances"] >= 2
    assert summary["imbalance_after"] < summary["imbalance_before"] - 0.2
    assert (checkout / "out" / "demo" / "report.html").stat().st_size > 10_000
    assert "eplb demo: summary" in result.stdout

    env["PYTEST_ADDOPTS"] = "-p no:cacheprovider -k 'quick_start_has or ci_runs_the_readme'"
    tests = subprocess.run(
        quick_start_commands()[1], shell=True, cwd=checkout, env=env,
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, (tests.stdout[-3000:], tests.stderr[-3000:])
    assert "== ruff" in tests.stdout and "== mypy" in tests.stdout
    assert re.search(r"\b2 passed", tests.stdout), tests.stdout[-2000:]
