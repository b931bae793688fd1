"""Fixtures: a local cluster over real HTTP, a small JSON client for it, and real kubectl."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eplb_operator.cluster import LocalCluster
from eplb_operator.cluster.tools import binaries
from eplb_operator.sandbox.api import Api, Reply

__all__ = ["XPL", "Api", "Reply", "eventually", "placement"]

XPL = "/apis/eplb.io/v1alpha1/namespaces/default/expertplacements"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as local:
        yield local


@pytest.fixture
def api(cluster: LocalCluster) -> Api:
    return Api(cluster.url)


@pytest.fixture(scope="session")
def kubectl_binary() -> Path:
    # A missing binary fails the test (never a skip): CI must have the real kubectl.
    return binaries()["kubectl"]


@pytest.fixture
def kubectl(cluster: LocalCluster, kubectl_binary: Path):  # type: ignore[no-untyped-def]
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kubectl_binary), "--kubeconfig", str(cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds (an operator acts asynchronously), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def placement(name: str = "ds", **spec_changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "model": {"layers": 4, "experts": 16},
        "topology": {"ranks": 4, "slotsPerRank": 5},
        "online": {},
    }
    spec.update(spec_changes)
    return {
        "apiVersion": "eplb.io/v1alpha1",
        "kind": "ExpertPlacement",
        "metadata": {"name": name},
        "spec": spec,
    }
