"""The GPU benchmark's CPU path: the same script, tiny models, short windows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_gpu_benchmark_runs_on_the_cpu_and_reports_an_exact_hot_swap(tmp_path: Path) -> None:
    output = tmp_path / "transformers.md"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "transformers_gpu.py"), "--smoke",
         "--models", "qwen3-moe", "--window", "0.5", "--output", str(output)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in output.read_text().splitlines() if line.startswith("| qwen3-moe"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[-2:] == ["**yes**", "yes"]  # logits bit-identical, every slot exact
    committed = int(cells[6].split(" × ")[0])
    rollouts, rest = divmod(committed, 2)  # the smoke model has 2 MoE layers
    assert rest == 0 and rollouts % 2 == 1  # whole rollouts, ending on the moved placement
    assert all(float(cells[i].split()[0].replace(",", "")) > 0 for i in (3, 4, 5))
