"""The rendezvous store of peer transfers, open only to the peers of an operator-named session.

Threat model.  The transfer port is reachable by whatever the pod network lets through
(the chart's NetworkPolicies narrow that, but they are optional and not every CNI enforces
them).  torch's ``TCPStore`` authenticates nobody: whoever reaches it reads and writes keys.
A session's keys are the addresses its ranks exchange weights over, so an outsider could
read them, or write their own and have a rank exchange expert weights with them: bytes the
fingerprint check does not cover (it compares placements, not weights), which go straight
into the serving model.  Hence the store never listens on the network: it is bound to
loopback, and the transfer port is a gate in front of it.  A connection is spliced through
to the store only after a mutual challenge-response proves that the peer holds the
session's key: an HMAC-SHA256 over fresh nonces of both sides, so a recorded handshake
cannot be replayed, and a listener posing as the store (a peer's address taken over) cannot
answer it.  The key derives from the session's name and a secret the operator makes per
placement (and operator process) and hands out only over the authenticated control API
(or, while an operator sends none, from the control API's bearer token, which only the
operator and the sidecars hold).

Not covered: the bulk transfer itself (gloo's and NCCL's own sockets, whose addresses only
peers that passed the gate learn), anything inside the pod (loopback is shared by its
containers), and flooding the port (bounded, not prevented: a handshake has a deadline and
a size limit, and at most ``MAX_PENDING`` run at once).

Wire protocol, one line each way before the splice::

    gate → peer   EPLB-RENDEZVOUS/1 <gate nonce, hex>
    peer → gate   <session> <peer nonce, hex> <HMAC(key, "peer" | nonces | session), hex>
    gate → peer   OK <HMAC(key, "gate" | nonces | session), hex>      (or DENIED, then close)
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import logging
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, TypeVar

from torch.distributed import Store, TCPStore  # type: ignore[attr-defined]

log = logging.getLogger("eplb_sidecar.rendezvous")

GREETING = b"EPLB-RENDEZVOUS/1"
NONCE_BYTES = 16
LINE_LIMIT = 512  # longer than any valid handshake line (a session name is at most 200)
LINE_SECONDS = 10.0  # to send one handshake line
REGISTRATION_SECONDS = 60.0  # a peer may knock before the store's own sidecar got the key
MAX_PENDING = 64  # handshakes in progress at once; more connections are dropped
KEPT_SESSIONS = 64  # session keys a gate remembers
# Bytes a handshake line may hold: session names, hex, the greeting; anything else (say a
# TCPStore client's binary request) ends the connection at its first byte.
_LINE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/- ")

T = TypeVar("T")


class HandshakeError(RuntimeError):
    """A peer or a gate failed the handshake (wrong key, garbage, a closed connection)."""


def session_key(secret: bytes, session: str) -> bytes:
    """The key of ``session``: what its peers prove they hold."""
    return hmac.new(secret, b"eplb-rendezvous\0" + session.encode(), hashlib.sha256).digest()


def _proof(key: bytes, role: bytes, gate_nonce: bytes, peer_nonce: bytes, session: str) -> bytes:
    message = role + b"\0" + gate_nonce + peer_nonce + session.encode()
    return hmac.new(key, message, hashlib.sha256).digest()


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """One handshake line; refuses a foreign byte at once rather than at the deadline."""
    line = bytearray()
    while len(line) <= LINE_LIMIT:
        byte = await reader.readexactly(1)
        if byte == b"\n":
            return bytes(line)
        if byte[0] not in _LINE_BYTES:
            raise HandshakeError("not a rendezvous handshake")
        line += byte
    raise HandshakeError("handshake line too long")


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Copy bytes both ways until either side closes, then close both."""

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(1 << 16):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass  # a reset is an end like any other

    pumps = [asyncio.create_task(pump(a[0], b[1])), asyncio.create_task(pump(b[0], a[1]))]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        for _, writer in (a, b):
            writer.close()


class Rendezvous:
    """This sidecar's store behind its gate, and authenticated connections to peers' gates.

    The gate and the forwarders run on an event loop of their own, in a daemon thread: peer
    transfers block worker threads for seconds, the control API's loop must not wait on
    them, and the store must answer peers meanwhile.
    """

    def __init__(
        self, host: str, port: int, registration_seconds: float = REGISTRATION_SECONDS
    ) -> None:
        self.registration_seconds = registration_seconds
        # Given a port, TCPStore listens on every address, whatever host it is told: the
        # store gets a socket of ours, bound to loopback, instead (kept open as long as it).
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._store_port = int(self._listener.getsockname()[1])
        self._store = TCPStore(
            "127.0.0.1", self._store_port, is_master=True, wait_for_workers=False,
            master_listen_fd=self._listener.fileno(), use_libuv=True,
        )  # fmt: skip
        self._keys: OrderedDict[str, bytes] = OrderedDict()  # session → key (loop thread only)
        self._forgotten: OrderedDict[str, None] = OrderedDict()  # denied without waiting
        self._forwarders: dict[str, asyncio.Server] = {}  # session → loopback listener
        self._failures: dict[str, str] = {}  # session → why its first handshake failed
        self._pending = 0
        self._loop = asyncio.new_event_loop()
        self._key_changed = asyncio.Event()
        threading.Thread(target=self._loop.run_forever, name="rendezvous", daemon=True).start()
        self._gate = self._run(asyncio.start_server(self._admit, host, port))
        self.port = int(self._gate.sockets[0].getsockname()[1])

    # -- called from worker threads ------------------------------------------------------
    def allow(self, session: str, key: bytes) -> None:
        """Let peers proving ``key`` into ``session`` (the last KEPT_SESSIONS are kept)."""
        self._run(self._set_key(session, key))

    def forget(self, session: str) -> None:
        """Refuse ``session`` from now on and stop forwarding its new connections."""
        self._run(self._drop(session))

    def connect(self, store: str, session: str, key: bytes, timeout: float) -> Store:
        """A client of the store behind the gate at ``store`` (``host:port``).

        torch's client connects to a loopback forwarder of ours, which authenticates each
        connection to the gate before it splices it through.
        """
        host, port = store.rsplit(":", 1)
        self._failures.pop(session, None)
        local_port = self._run(self._forward(host, int(port), session, key, timeout))
        try:
            return TCPStore(
                "127.0.0.1",
                local_port,
                is_master=False,
                timeout=datetime.timedelta(seconds=timeout),
            )
        except Exception as error:
            why = self._failures.get(session)
            raise HandshakeError(why or f"store at {store}: {error}") from error

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # -- on the loop ---------------------------------------------------------------------
    async def _set_key(self, session: str, key: bytes) -> None:
        self._forgotten.pop(session, None)
        self._keys[session] = key
        self._keys.move_to_end(session)
        while len(self._keys) > KEPT_SESSIONS:
            self._keys.popitem(last=False)
        self._key_changed.set()
        self._key_changed = asyncio.Event()

    async def _drop(self, session: str) -> None:
        self._keys.pop(session, None)
        self._forgotten[session] = None
        while len(self._forgotten) > KEPT_SESSIONS:
            self._forgotten.popitem(last=False)
        forwarder = self._forwarders.pop(session, None)
        if forwarder is not None:
            forwarder.close()

    async def _key_of(self, session: str) -> bytes | None:
        """The key of ``session``, waiting up to ``registration_seconds`` for it to arrive."""
        deadline = self._loop.time() + self.registration_seconds
        while (
            session not in self._keys
            and session not in self._forgotten
            and self._loop.time() < deadline
        ):
            changed = self._key_changed
            try:
                await asyncio.wait_for(changed.wait(), deadline - self._loop.time())
            except TimeoutError:
                break
        return self._keys.get(session)

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The gate: handshake, then splice to the store; anything else is dropped."""
        if self._pending >= MAX_PENDING:
            writer.close()
            return
        self._pending += 1
        try:
            session = await self._challenge(reader, writer)
        except (HandshakeError, TimeoutError, OSError, asyncio.IncompleteReadError) as error:
            peer = writer.get_extra_info("peername")
            log.warning("rendezvous gate refused %s: %s", peer, error)
            writer.close()
            return
        finally:
            self._pending -= 1
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self._store_port)
        except OSError:
            writer.close()
            return
        log.debug("rendezvous gate admitted a peer of session %s", session)
        await _splice((reader, writer), upstream)

    async def _challenge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        gate_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(GREETING + b" " + gate_nonce.hex().encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(_read_line(reader), LINE_SECONDS)
        try:
            session, peer_hex, proof_hex = line.decode().split(" ")
            peer_nonce, proof = bytes.fromhex(peer_hex), bytes.fromhex(proof_hex)
        except ValueError:
            raise HandshakeError("malformed handshake") from None
        if len(peer_nonce) != NONCE_BYTES:
            raise HandshakeError("malformed handshake")
        key = await self._key_of(session)
        expected = _proof(key or b"", b"peer", gate_nonce, peer_nonce, session)
        if key is None or not hmac.compare_digest(proof, expected):
            writer.write(b"DENIED\n")
            await writer.drain()
            raise HandshakeError(f"no valid proof for session {session!r}")
        answer = _proof(key, b"gate", gate_nonce, peer_nonce, session)
        writer.write(b"OK " + answer.hex().encode() + b"\n")
        await writer.drain()
        return session

    async def _forward(self, host: str, port: int, session: str, key: bytes, timeout: float) -> int:
        """A loopback listener whose connections are authenticated to the gate, then spliced."""

        async def on_local(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream = await asyncio.wait_for(self._prove(host, port, session, key), timeout)
            except (HandshakeError, TimeoutError, OSError, asyncio.IncompleteReadError) as error:
                reason = str(error) or type(error).__name__
                self._failures.setdefault(session, f"rendezvous store at {host}:{port}: {reason}")
                writer.close()
                return
            await _splice((reader, writer), upstream)

        old = self._forwarders.pop(session, None)
        if old is not None:
            old.close()
        server = await asyncio.start_server(on_local, "127.0.0.1", 0)
        self._forwarders[session] = server
        return int(server.sockets[0].getsockname()[1])

    async def _prove(
        self, host: str, port: int, session: str, key: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            greeting = await asyncio.wait_for(_read_line(reader), LINE_SECONDS)
            name, _, gate_hex = greeting.partition(b" ")
            if name != GREETING:
                raise HandshakeError("not a rendezvous gate")
            try:
                gate_nonce = bytes.fromhex(gate_hex.decode())
            except ValueError:
                raise HandshakeError("not a rendezvous gate") from None
            peer_nonce = secrets.token_bytes(NONCE_BYTES)
            proof = _proof(key, b"peer", gate_nonce, peer_nonce, session)
            writer.write(f"{session} {peer_nonce.hex()} {proof.hex()}\n".encode())
            await writer.drain()
            answer = await _read_line(reader)  # the gate may wait for its key first
            verdict, _, gate_proof_hex = answer.partition(b" ")
            if verdict != b"OK":
                raise HandshakeError(
                    f"refused this sidecar's proof for session {session!r} (another secret?)"
                )
            expected = _proof(key, b"gate", gate_nonce, peer_nonce, session)
            try:
                gate_proof = bytes.fromhex(gate_proof_hex.decode())
            except ValueError:
                gate_proof = b""
            if not hmac.compare_digest(gate_proof, expected):
                raise HandshakeError(f"the gate does not hold the key of session {session!r}")
        except BaseException:
            writer.close()
            raise
        return reader, writer
