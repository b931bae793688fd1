"""The soak in CI: a few rebalances under inference with every kind of kill (sidecar, pod,
operator), DESIGN.md §5 checked after each by the script itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_rebalances_with_a_sidecar_a_pod_and_the_operator_killed_keep_every_invariant(
    tmp_path: Path,
) -> None:
    output = tmp_path / "soak.md"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--rebalances", "6",
         "--kill-every", "2", "--seed", "1", "--output", str(output)],
        capture_output=True, text=True, timeout=900, check=False, cwd=REPO,
    )  # fmt: skip
    # Exit 1 on a §5 violation or on memory/descriptor growth past the stated bounds.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = next(line for line in output.read_text().splitlines() if line.startswith("| 6 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "sidecar 1, pod 1, operator 1", cells  # each kind killed once
    assert cells[4] == "0"  # violations
