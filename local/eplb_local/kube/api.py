"""The tooling's synchronous face of the project's one Kubernetes client: raw paths, JSON in
and out.

Tests, the node agent, the world builder and the demo are synchronous (threads, no event
loop), so ``Api`` runs one kubernetes_asyncio ``ApiClient``, built by
``eplb_operator.controller.kube.api_client`` from a kubeconfig (its loader reads the CA,
client certificate and token), on an event loop in a daemon thread of its own, and hands
each call to that loop.  Any thread may call; connections are kept alive between calls.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client

from eplb_operator import __version__
from eplb_operator.controller.kube import api_client

TIMEOUT = 30.0  # seconds per request, connecting and reading the whole reply included
USER_AGENT = f"eplb-local/{__version__}"

T = TypeVar("T")


@dataclass
class Reply:
    code: int
    body: Any


class ApiError(RuntimeError):
    """A call that had to succeed did not: the reply says why."""

    def __init__(self, method: str, path: str, reply: Reply) -> None:
        message = reply.body.get("message") if isinstance(reply.body, dict) else reply.body
        super().__init__(f"{method} {path}: {reply.code} {message}")
        self.reply = reply


class Api:
    """``with Api(kubeconfig) as api:`` — the cluster that ``kubeconfig`` names, as its user.

    ``call`` returns every reply the server gives, 2xx or not; a request that gets none
    (the server unreachable, the connection lost, no reply in ``TIMEOUT``) raises an
    ``OSError``, as a socket's failure does."""

    def __init__(self, kubeconfig: Path) -> None:
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, name="kube-api", daemon=True)
        thread.start()
        try:
            self._client = self._run(api_client(kubeconfig, USER_AGENT))
        except BaseException:
            _stop(self._loop, thread, None)
            raise
        # Closed by close(), or when the object is collected or the interpreter exits.
        self._close = weakref.finalize(self, _stop, self._loop, thread, self._client)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Reply:
        return self._run(self._request(method, path, body, content_type))

    def get(self, path: str, **query: str) -> Reply:
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
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

    def checked(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """The body of a 2xx reply; ApiError for anything else."""
        reply = self.call(method, path, body, content_type)
        if not 200 <= reply.code < 300:
            raise ApiError(method, path, reply)
        return reply.body

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _request(self, method: str, path: str, body: Any, content_type: str) -> Reply:
        try:
            # Left unread (_preload_content=False), a reply comes back whatever its status;
            # read by the client, anything but a 2xx would be raised as an ApiException.
            response = await self._client.call_api(
                path,
                method,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
            async with response:
                return Reply(response.status, _json(await response.read()))
        except aiohttp.ClientError as error:
            if isinstance(error, OSError):  # refused, reset, timed out: already one
                raise
            raise ConnectionError(f"{method} {path}: {error!r}") from error


def _stop(
    loop: asyncio.AbstractEventLoop, thread: threading.Thread, api: client.ApiClient | None
) -> None:
    """Close ``api``'s connections, then stop its loop and thread."""
    if api is not None:
        asyncio.run_coroutine_threadsafe(api.close(), loop).result(TIMEOUT)
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def _json(raw: bytes) -> Any:
    """A reply body: JSON, or the text itself (e.g. a pod's log)."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")
