"""The transfer rendezvous: only peers holding the session's key get to the store.

Real gloo process groups and real TCP, two sidecars' PeerGroups in this process (one thread
each, as their worker threads would be), an outsider on the same network.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from torch.distributed import TCPStore  # type: ignore[attr-defined]

from eplb_sidecar.api import TransferGroup
from eplb_sidecar.rendezvous import HandshakeError, Rendezvous, session_key
from eplb_sidecar.transfer import PeerGroups, TransferError, agree

pytestmark = pytest.mark.slow

SECRET = "k" * 43
TOKEN = b"control-api-token"


@pytest.fixture
def sidecars() -> list[PeerGroups]:
    return [PeerGroups("127.0.0.1", 0, fallback_secret=lambda: TOKEN) for _ in range(2)]


def transfer(peers: list[PeerGroups], session: str, secret: str | None = SECRET) -> TransferGroup:
    return TransferGroup(
        session=session, store=f"127.0.0.1:{peers[0].port}", ranks=[0, 1], secret=secret
    )


def join_both(groups: list[tuple[PeerGroups, TransferGroup]], timeout: float) -> list[Any]:
    """Each rank's ``agree`` result, or the error it got."""

    def join(rank: int) -> Any:
        peers, group = groups[rank]
        try:
            return agree(peers.group(group, rank, timeout), rank, 1000 + rank, True)
        except TransferError as error:
            return error

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(join, [0, 1]))


def authenticated_client(peers: PeerGroups, group: TransferGroup) -> Any:
    """A client of rank 0's store that went through the gate, as a member of ``group``."""
    key = session_key(SECRET.encode(), group.session)
    return peers[0].rendezvous.connect(group.store, group.session, key, 5)  # type: ignore[index]


def test_the_sessions_peers_meet_with_the_operators_secret_or_the_token(
    sidecars: list[PeerGroups],
) -> None:
    for session, secret in (("with-secret", SECRET), ("from-token", None)):
        group = transfer(sidecars, session, secret)
        views = join_both([(sidecars[0], group), (sidecars[1], group)], 20)
        assert views == [{0: (1000, True), 1: (1001, True)}] * 2, views


def test_an_outsider_can_neither_read_nor_write_keys(sidecars: list[PeerGroups]) -> None:
    group = transfer(sidecars, "busy")
    assert not any(
        isinstance(v, Exception)
        for v in join_both([(sidecars[0], group), (sidecars[1], group)], 20)
    )
    member = authenticated_client(sidecars, group)
    keys = member.num_keys()
    assert keys > 0  # the rendezvous wrote its addresses there

    # torch's own client, pointed at the transfer port: it never reaches the store (it
    # retries until its timeout; the gate drops each try at its first byte).
    with pytest.raises(Exception, match="Ping failed"):  # torch's own error type
        outsider = TCPStore("127.0.0.1", sidecars[0].port, is_master=False,
                            timeout=datetime.timedelta(seconds=2))  # fmt: skip
        outsider.set("eplb/busy/evil", b"1")

    # Raw bytes: a store request, a forged handshake.
    for attempt in (
        b"\x00\x03\x00\x00\x00\x00\x00\x00\x00set",
        b"busy " + b"00" * 16 + b" " + b"11" * 32 + b"\n",
    ):
        assert knock(sidecars[0].port, attempt) in (b"", b"DENIED\n")
    assert member.num_keys() == keys
    assert not member.check(["evil"])


def knock(port: int, attempt: bytes) -> bytes:
    """Send ``attempt`` after the gate's greeting; what the gate says before it hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert sock.recv(100).startswith(b"EPLB-RENDEZVOUS/1 ")
        sock.sendall(attempt)
        return b"".join(iter(lambda: sock.recv(100), b""))


def test_an_unknown_session_is_denied_once_its_key_had_time_to_arrive() -> None:
    gate = Rendezvous("127.0.0.1", 0, registration_seconds=1)
    started = time.monotonic()
    assert knock(gate.port, b"nobody " + b"00" * 16 + b" " + b"11" * 32 + b"\n") == b"DENIED\n"
    assert 1 <= time.monotonic() - started < 5


def test_a_peer_with_another_secret_cannot_join_the_session(sidecars: list[PeerGroups]) -> None:
    good = transfer(sidecars, "s1")
    impostor = transfer(sidecars, "s1", secret="x" * 43)
    views = join_both([(sidecars[0], good), (sidecars[1], impostor)], 3)
    assert all(isinstance(v, TransferError) for v in views), views
    assert "refused this sidecar's proof" in str(views[1])
    # Nor does the control token stand in for the operator's secret.
    views = join_both([(sidecars[0], transfer(sidecars, "s2")),
                       (sidecars[1], transfer(sidecars, "s2", None))], 3)  # fmt: skip
    assert all(isinstance(v, TransferError) for v in views), views


async def test_a_listener_without_the_key_cannot_pose_as_the_store() -> None:
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"EPLB-RENDEZVOUS/1 " + b"ab" * 16 + b"\n")
        await reader.readline()
        writer.write(b"OK " + b"cd" * 32 + b"\n")  # it cannot compute the gate's proof
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer = Rendezvous("127.0.0.1", 0)
    key = session_key(b"secret", "s")
    with pytest.raises(HandshakeError, match="does not hold the key"):
        await asyncio.to_thread(peer.connect, f"127.0.0.1:{port}", "s", key, 3)
    server.close()


def test_a_peer_may_knock_before_the_stores_sidecar_has_the_key() -> None:
    gate = Rendezvous("127.0.0.1", 0, registration_seconds=10)
    peer = Rendezvous("127.0.0.1", 0)
    key = session_key(b"secret", "early")
    with ThreadPoolExecutor(1) as pool:
        joining = pool.submit(peer.connect, f"127.0.0.1:{gate.port}", "early", key, 10)
        time.sleep(0.5)
        gate.allow("early", key)
        client = joining.result(10)
    client.set("k", b"v")
    assert client.get("k") == b"v"


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} write them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_the_store_listens_on_loopback_only_and_the_gate_where_asked() -> None:
    """Only the gate faces the network: torch's store, told a port, would listen on every
    address and let anyone who reaches the pod past the gate."""
    rendezvous = Rendezvous("0.0.0.0", 0)
    assert listening_addresses(rendezvous._store_port) == {"0100007F"}  # 127.0.0.1
    assert listening_addresses(rendezvous.port) == {"00000000"}  # the gate: 0.0.0.0
