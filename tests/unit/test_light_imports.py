"""Processes of the local world that start no engine import no torch: each node agent and the
control plane would otherwise pay seconds of CPU per start on a loaded 2-core machine."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "eplb_local.node.__main__",  # every node agent process
        "eplb_local.node.enter",  # every container, before it execs the container's command
        "eplb_local.kube.control_plane",  # the local control plane
    ],
)
def test_a_process_that_starts_no_engine_imports_no_torch(module: str) -> None:
    check = f"import sys, {module}; print([m for m in sys.modules if m.split('.')[0] == 'torch'])"
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} imports torch: {result.stdout.strip()}"
