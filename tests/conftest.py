"""Shared fixtures: repository paths, the shared load traces, and the local cluster."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from eplb_local.world import LocalKube

# How pytest-xdist's workers share the suite.
pytest_plugins = ["tests.scheduling"]

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


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKube]:
    """One real control plane (etcd, kube-apiserver, kube-controller-manager) and its node for
    the whole session, the CRDs installed; tests keep to namespaces of their own. A missing
    binary fails here, never skips: CI must build them (scripts/setup.sh)."""
    from eplb_local.world import LocalKube  # local tooling: a GPU machine runs without it
    from eplb_local.world.warm import warm_compile_cache

    # The operator pods' kernels compiled once, up front, not inside a test's wait.
    warm_compile_cache()
    with LocalKube(tmp_path_factory.mktemp("kube")) as local:
        yield local


def unique_namespace() -> str:
    """A name no other test's namespace has."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def namespace(kube: LocalKube) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards."""
    name = unique_namespace()
    kube.api_checked().checked("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    kube.api_checked().delete(f"/api/v1/namespaces/{name}")
