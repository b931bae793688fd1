"""The README's quick start is the contract with a new user: exactly two commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from eplb_operator.report.recording import Recording

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
def test_the_readme_demo_command_works_as_written_in_a_fresh_checkout(tmp_path: Path) -> None:
    """What a new user types first: it sets up a fresh .venv and runs the whole demo, which
    rebalances twice and leaves its report.  (The second command is what CI runs, on a
    fresh clone: test_ci_runs_the_readme_test_command_unchanged.)"""
    checkout = checkout_copy(tmp_path / "checkout")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not p.startswith(str(REPO)))
    result = subprocess.run(
        quick_start_commands()[0], shell=True, cwd=checkout, env=env,
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert (checkout / ".venv" / "bin" / "eplb").exists()  # set up by the command itself
    assert "eplb demo: summary" in result.stdout
    workdir, report = checkout / ".eplb-demo", checkout / "out" / "demo"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"], summary["problems"]
    assert summary["outputs_identical"] is True and summary["consistent"] is True
    assert summary["prometheus"] is True  # the real one: setup.sh installs it
    assert summary["aborted"] == 0 and summary["fault"] is None
    first, shifted = summary["phases"]
    for phase in (first, shifted):  # each load pattern: worse before, balanced after
        assert phase["rebalanced"], phase
        assert phase["imbalance_after"] < 1.15 < phase["imbalance_before"], phase
    assert summary["rebalances"] >= 2
    assert summary["imbalance_after"] < summary["imbalance_before"] - 0.2
    completed = [r for r in summary["rollouts"] if r["result"] == "completed"]
    assert sum(r["moves"] for r in completed) == summary["moves"] >= 1
    assert all(r["batches"] >= 1 and r["prepare_seconds"] > 0 for r in completed), completed
    assert summary["rollout_seconds"] > 0

    # The report: three PNGs and a page that needs nothing else.
    for name in ("rank-load.png", "imbalance.png", "moves.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page
    for record in completed:
        assert f"<td>{record['revision']}</td>" in page

    # `eplb report` draws the same from the demo's directory afterwards.
    eplb = checkout / ".venv" / "bin" / "eplb"
    again = subprocess.run(
        [str(eplb), "report", "--demo", str(workdir), "--output", str(tmp_path / "again")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "report.html").exists()
    recording = Recording.load(workdir)
    assert (recording.layers, recording.ranks) == (8, 4)  # the demo's default sizes
    assert len(recording.samples) >= 20  # one a second
    assert [r.revision for r in recording.rollouts] == [r["revision"] for r in summary["rollouts"]]
