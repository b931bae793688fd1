"""``LocalCluster``: the emulator served over real HTTP on localhost, in a background thread.

Synchronous code (tests, ``kubectl`` in a subprocess, kopf in its own thread) talks to it
through ``url`` or the kubeconfig it writes; ``call`` runs a coroutine on its loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import kmock
import yaml

from eplb_operator.cluster.emulator import ClusterEmulator, now_rfc3339

T = TypeVar("T")
REPO_CRDS = Path(__file__).resolve().parents[3] / "crds"


class LocalCluster:
    """A local Kubernetes API with the project's CRDs, on 127.0.0.1."""

    def __init__(self, workdir: Path, crd_dir: Path = REPO_CRDS, port: int | None = None) -> None:
        self.workdir = workdir
        self.crd_dir = crd_dir
        self.port = port
        self.emulator = ClusterEmulator(strict=False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self.url = ""

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def __enter__(self) -> LocalCluster:
        for path in sorted(self.crd_dir.glob("*.yaml")):
            for document in yaml.safe_load_all(path.read_text()):
                if document and document.get("kind") == "CustomResourceDefinition":
                    self.emulator.register_crd(document)
        self._thread = threading.Thread(target=self._serve, name="local-cluster", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._failure is not None:
            raise RuntimeError(f"the local cluster did not start: {self._failure!r}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump(self._kubeconfig()))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the cluster's loop and wait for its result."""
        assert self._loop is not None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coroutine, self._loop
        )
        return future.result(timeout=60)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # surfaced to __enter__
            self._failure = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server_factory = (
            kmock.Server(self.emulator, port=self.port)
            if self.port
            else kmock.Server(self.emulator)
        )
        async with self.emulator, server_factory as server:
            self.url = str(server.url).rstrip("/")
            namespaces = kmock.resource("", "v1", "namespaces")
            self.emulator.objects[namespaces, None, "default"] = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": "default",
                    "uid": "default",
                    "resourceVersion": "1",
                    "creationTimestamp": now_rfc3339(),
                },
            }
            self._ready.set()
            await self._stop.wait()

    def _kubeconfig(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.url}}],
            "users": [{"name": "local", "user": {"token": "local-cluster"}}],
            "contexts": [
                {
                    "name": "local",
                    "context": {"cluster": "local", "user": "local", "namespace": "default"},
                }
            ],
            "current-context": "local",
        }
