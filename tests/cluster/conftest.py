"""Fixtures for tests against the real API server: kubectl in the test's namespace."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from eplb_local.kube.api import Api
from eplb_local.world import LocalKube

__all__ = ["eventually", "placement", "xpl_path"]


def xpl_path(namespace: str) -> str:
    return f"/apis/eplb.io/v1alpha1/namespaces/{namespace}/expertplacements"


@pytest.fixture
def api(kube: LocalKube) -> Api:
    return kube.api_checked()


@pytest.fixture
def kubectl(kube: LocalKube, namespace: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The real kubectl, as the cluster's admin, in the test's namespace."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return kube.kubectl("--namespace", namespace, *args)

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
