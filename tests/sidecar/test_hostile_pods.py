"""Hostile callers against real sidecar processes: a huge body, an outsider at the transfer
port, a peer with another session secret.  Each leaves the pods serving what they served."""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.distributed import TCPStore  # type: ignore[attr-defined]

from eplb_local.launch import LocalGroup
from eplb_sidecar.api import PrepareRequest, TransferGroup
from eplb_sidecar.client import SidecarClient, SidecarError
from eplb_sidecar.engine.config import EngineConfig, Workload

from .conftest import assert_unchanged, snapshot
from .control import raw_request
from .test_pods import new_placement, tables

pytestmark = pytest.mark.slow

CONFIG = EngineConfig(
    ranks=4, layers=4, experts=12, slots_per_rank=4, hidden=32, intermediate=16,
    workload=Workload(tokens_per_step=128, step_interval=0.01),
)  # fmt: skip


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGroup]:
    pods = LocalGroup(CONFIG, tmp_path_factory.mktemp("hostile")).start()
    yield pods
    pods.stop()


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) / 1024


async def test_a_256_mib_body_is_refused_without_growing_the_sidecar(group: LocalGroup) -> None:
    pod = group.pods[0]
    assert pod.sidecar is not None
    before = peak_rss_mib(pod.sidecar.pid)
    chunk = b"1, " * (1 << 18)  # 768 KiB × 342: 256 MiB
    answer = await raw_request(
        pod.control_port, "POST", "/v1/prepare", chunk,
        [(b"Content-Type", b"application/json")], group.token.encode(), 120, repeat=342,
    )  # fmt: skip
    assert answer.status == 413 and answer.json()["reason"] == "RequestTooLarge", answer
    grown = peak_rss_mib(pod.sidecar.pid) - before
    assert grown < 32, f"the sidecar's peak RSS grew by {grown:.0f} MiB for a refused body"
    async with SidecarClient(pod.control_url, group.token) as client:
        assert (await client.info()).pod == pod.name  # still serving


def test_an_outsider_at_the_transfer_port_never_reaches_the_store(group: LocalGroup) -> None:
    with pytest.raises(Exception, match="Ping failed"):  # torch's own error type
        TCPStore("127.0.0.1", group.pods[0].transfer_port, is_master=False,
                 timeout=datetime.timedelta(seconds=2))  # fmt: skip


async def test_a_peer_given_another_secret_cannot_join_and_nothing_changes(
    group: LocalGroup,
) -> None:
    before = [snapshot(table) for table in tables(group)]
    layers = new_placement(5)

    def transfer(secret: str) -> TransferGroup:
        return TransferGroup(session="mixed", store=group.pods[0].store,
                             ranks=list(range(CONFIG.ranks)), secret=secret)  # fmt: skip

    async def prepare(rank: int) -> object:
        secret = ("b" if rank == 3 else "a") * 43
        request = PrepareRequest(revision=1, layers=layers, transfer=transfer(secret),
                                 timeout_seconds=3)  # fmt: skip
        async with SidecarClient(group.pods[rank].control_url, group.token) as client:
            try:
                return await client.prepare(request)
            except SidecarError as error:
                return error

    answers = await asyncio.gather(*(prepare(rank) for rank in range(CONFIG.ranks)))
    assert all(isinstance(a, SidecarError) and a.status == 503 for a in answers), answers
    assert all(a.problem.reason == "TransferFailed" for a in answers)  # type: ignore[attr-defined]
    assert "refused this sidecar's proof" in answers[3].problem.message  # type: ignore[attr-defined]
    for table, state in zip(tables(group), before, strict=True):
        assert_unchanged(table, state)
