"""A pod's control API served in process (a real table, executor and aiohttp server), and a
raw HTTP client that can send what well-behaved clients refuse to (non-ASCII headers, any
bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from eplb_local.engine.reference import ReferenceEngine
from eplb_sidecar.auth import TokenFileAuth
from eplb_sidecar.checkpoint import CheckpointReader
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.exporter import SidecarMetrics
from eplb_sidecar.server import control_app
from eplb_sidecar.shuffle import ShuffleExecutor

TOKEN = "s3cret-token"


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ControlServer:
    engine: ReferenceEngine
    executor: ShuffleExecutor
    token_file: Path
    port: int

    async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        """:func:`raw_request` to this pod."""
        return await raw_request(self.port, method, path, *args, **kwargs)


async def raw_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    token: bytes | None = TOKEN.encode(),
    timeout: float = 30.0,
    repeat: int = 1,
) -> Answer:
    """One HTTP/1.1 request on its own connection; headers go out as raw bytes.

    The body is ``body`` sent ``repeat`` times, one write each (a large body without a
    large buffer on this side); a server that answers early may stop reading it.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [
            f"{method} {path} HTTP/1.1".encode(),
            b"Host: pod",
            b"Connection: close",
            b"Content-Length: " + str(len(body) * repeat).encode(),
        ]
        if token is not None:
            lines.append(b"Authorization: Bearer " + token)
        lines += [name + b": " + value for name, value in headers or []]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")

        async def send() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(repeat):
                    writer.write(body)
                    await writer.drain()

        sending = asyncio.create_task(send())
        raw = await asyncio.wait_for(reader.read(), timeout)
        await sending
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return Answer(int(head.split(b" ", 2)[1]), payload)


@asynccontextmanager
async def control_server(
    directory: Path, config: EngineConfig, checkpoint: CheckpointReader | None
) -> AsyncIterator[ControlServer]:
    engine = ReferenceEngine(config, directory / "table")
    table = ExpertTable.attach(directory / "table")
    executor = ShuffleExecutor(table, "pod-0", None, checkpoint)
    token_file = directory / "token"
    token_file.write_text(TOKEN)
    app = control_app(executor, SidecarMetrics(table), TokenFileAuth(token_file))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield ControlServer(engine, executor, token_file, int(runner.addresses[0][1]))
    finally:
        await runner.cleanup()
