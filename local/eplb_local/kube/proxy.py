"""``FaultyApiProxy``: an HTTPS reverse proxy in front of the local kube-apiserver that fails
on command, for the operator's fault tests.

It serves the API server's own certificate (issued for the pod network's host address) on
another port of that address, so a pod pointed at it (``KUBERNETES_SERVICE_PORT``) trusts it
with its ServiceAccount CA and sends it its token, which goes through to the real server.
Two faults, both what a loaded or restarting API server (or a load balancer in front of
it) does:
- ``fail_status_writes(n)``: the next ``n`` writes (PATCH, PUT) of an ExpertPlacement's
  ``status`` subresource are answered 500 with a ``Status`` body, without reaching the
  server;
- ``drop_watches()``: every open watch stream is cut (the connection aborted mid-stream).
Everything else is passed through unchanged, watch streams chunk by chunk.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
from dataclasses import dataclass, field

from aiohttp import ClientError, ClientResponse, ClientSession, ClientTimeout, TCPConnector, web

from eplb_local.kube.control_plane import ControlPlane

STATUS_WRITE = re.compile(r"/apis/eplb\.io/[^/]+/namespaces/[^/]+/expertplacements/[^/]+/status$")
# Hop-by-hop headers (RFC 9110 §7.6.1) and those aiohttp sets itself.  Content-Encoding
# stays: bodies pass through as they came (a gzipped list stays gzipped).
SKIPPED_HEADERS = {
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-authenticate", "host", "content-length",
}  # fmt: skip


@dataclass
class ProxyCounts:
    """What the proxy saw: by resource plural, the watch requests it forwarded; the status
    writes it failed; the watch streams it cut."""

    watches: dict[str, int] = field(default_factory=dict)
    failed_status_writes: int = 0
    dropped_watches: int = 0


def _resource(path: str) -> str:
    """The plural of a collection path (``…/namespaces/ns/pods`` → ``pods``)."""
    parts = [p for p in path.split("/") if p]
    return parts[-1] if parts else ""


class FaultyApiProxy:
    """``with FaultyApiProxy(plane) as proxy:`` — serves on ``proxy.port`` of the host
    address of the pod network until the block ends."""

    def __init__(self, plane: ControlPlane, port: int) -> None:
        assert plane.network is not None and plane.pki is not None and plane.url is not None
        self.host = plane.network.gateway
        self.port = port
        self.upstream = plane.url
        self.pki = plane.pki
        self.counts = ProxyCounts()
        self._fail_status_writes = 0
        # Each open watch: the client's connection and the server's response it relays.
        self._streams: dict[web.StreamResponse, tuple[asyncio.Transport, ClientResponse]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-proxy",
                                         daemon=True)  # fmt: skip
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None

    # -- faults --------------------------------------------------------------------------
    def fail_status_writes(self, count: int) -> None:
        with self._lock:
            self._fail_status_writes = count

    def drop_watches(self) -> int:
        """Cut every open watch stream; how many there were."""
        return asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)

    async def _drop(self) -> int:
        streams = list(self._streams.values())
        for transport, upstream in streams:
            transport.abort()  # no final chunk: the client sees the stream break
            upstream.close()  # and the relay stops waiting for the server's next event
        self.counts.dropped_watches += len(streams)
        return len(streams)

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> FaultyApiProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        upstream_tls = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        self._client = ClientSession(
            connector=TCPConnector(ssl=upstream_tls),
            timeout=ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        serving_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        serving_tls.load_cert_chain(str(self.pki.apiserver.cert), str(self.pki.apiserver.key))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=serving_tls).start()

    async def _stop(self) -> None:
        await self._drop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    # -- forwarding ----------------------------------------------------------------------
    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.method in ("PATCH", "PUT") and STATUS_WRITE.search(request.path):
            with self._lock:
                fail = self._fail_status_writes > 0
                if fail:
                    self._fail_status_writes -= 1
                    self.counts.failed_status_writes += 1
            if fail:
                return web.json_response(
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "message": "injected by the test proxy", "reason": "InternalError",
                     "code": 500},
                    status=500,
                )  # fmt: skip
        watch = request.query.get("watch", "") in ("1", "true")
        if watch:
            plural = _resource(request.path)
            self.counts.watches[plural] = self.counts.watches.get(plural, 0) + 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIPPED_HEADERS}
        assert self._client is not None
        body = await request.read()
        async with self._client.request(
            request.method, self.upstream + request.path_qs, headers=headers,
            data=body or None, allow_redirects=False,
        ) as upstream:  # fmt: skip
            reply_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in SKIPPED_HEADERS
            }
            if not watch:
                return web.Response(
                    status=upstream.status, headers=reply_headers, body=await upstream.read()
                )
            stream = web.StreamResponse(status=upstream.status, headers=reply_headers)
            await stream.prepare(request)
            if request.transport is not None:
                self._streams[stream] = (request.transport, upstream)
            try:
                async for chunk in upstream.content.iter_any():
                    await stream.write(chunk)
                await stream.write_eof()
            except (ConnectionError, ClientError):
                pass  # the client went, or we cut the stream
            finally:
                self._streams.pop(stream, None)
            return stream
