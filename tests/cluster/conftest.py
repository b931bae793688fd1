"""Fixtures: a local cluster over real HTTP, a small JSON client for it, and real kubectl."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eplb_operator.cluster import LocalCluster
from eplb_operator.cluster.tools import binaries

XPL = "/apis/eplb.io/v1alpha1/namespaces/default/expertplacements"


@dataclass
class Reply:
    code: int
    body: Any


class Api:
    """Plain HTTP to the cluster, as any Kubernetes client would speak it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, json.loads(response.read() or b"null"))
        except urllib.error.HTTPError as error:
            return Reply(error.code, json.loads(error.read() or b"null"))

    def get(self, path: str) -> Reply:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Reply:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any) -> Reply:
        return self.call("PUT", path, body)

    def merge(self, path: str, body: Any) -> Reply:
        return self.call("PATCH", path, body, "application/merge-patch+json")

    def json_patch(self, path: str, ops: list[dict[str, Any]]) -> Reply:
        return self.call("PATCH", path, ops, "application/json-patch+json")

    def delete(self, path: str) -> Reply:
        return self.call("DELETE", path)


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
