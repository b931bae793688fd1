"""Shared fixtures: repository paths and the shared load traces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the same examples every time, so a red build is reproducible; locally hypothesis
# explores new ones on each run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REPO = Path(__file__).resolve().parent.parent
SHARED_LOADS = REPO.parent / "shared" / "data" / "loads"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_traces() -> list[Path]:
    """The real traces beside the repository (../shared/data/loads): CI always has them."""
    traces = sorted(SHARED_LOADS.glob("*.json"))
    if not traces:
        pytest.fail(f"no load traces under {SHARED_LOADS}")
    return traces
