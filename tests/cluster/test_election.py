"""Leader election on a real Lease of the real API server (controller/election.py): one
candidate leads at a time, a follower takes over when the leader stops renewing (after about
the lease duration) or gives the Lease up (at its next retry), and a leader whose Lease is
taken stops at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from eplb_local.kube.api import Api
from eplb_local.world import LocalKube
from eplb_operator.controller.election import ElectionSettings, LeaseElector
from eplb_operator.controller.kube import api_client

# Short, so the test is quick; still lease > renew deadline > 1.2 × retry period.
LEASE, RENEW, RETRY = 4, 2.5, 1.0


def run(kube: LocalKube, monkeypatch: pytest.MonkeyPatch, scenario: Callable[..., Awaitable[Any]],
        namespace: str) -> None:  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))

    async def with_client() -> None:
        async with await api_client() as api:

            def candidate(identity: str, lease: str = "operator") -> LeaseElector:
                settings = ElectionSettings(lease, namespace, identity, LEASE, RENEW, RETRY)
                return LeaseElector(settings, api)

            await scenario(candidate)

    asyncio.run(with_client())


def holder(api: Api, namespace: str, lease: str = "operator") -> str | None:
    body = api.checked("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{lease}")
    return (body.get("spec") or {}).get("holderIdentity")


def test_one_leads_and_a_follower_takes_over_only_once_renewals_stop(
    kube: LocalKube, api: Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(candidate: Callable[[str], LeaseElector]) -> None:
        first, second = candidate("first"), candidate("second")
        await first.acquire()
        holding = asyncio.create_task(first.hold())
        following = asyncio.create_task(second.acquire())
        await asyncio.sleep(2 * LEASE)  # renewed all along: the follower keeps following
        assert not following.done() and not holding.done()
        assert first.leading and second.holder == "first" and not second.leading
        assert holder(api, namespace) == "first"
        holding.cancel()  # the leader dies: no renewal, no release
        died = time.monotonic()
        await asyncio.wait_for(following, 4 * LEASE)
        waited = time.monotonic() - died
        assert second.leading and holder(api, namespace) == "second"
        # The follower waits out the lease (counted from the last renewal it saw, at most a
        # retry period before the death), never takes it earlier.
        assert LEASE - RETRY - 1.5 <= waited <= LEASE + 3 * RETRY + 2, waited

    run(kube, monkeypatch, scenario, namespace)


def test_a_leader_that_gives_the_lease_up_is_replaced_at_the_next_retry(
    kube: LocalKube, api: Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(candidate: Callable[[str], LeaseElector]) -> None:
        first, second = candidate("first"), candidate("second")
        await first.acquire()
        following = asyncio.create_task(second.acquire())
        await asyncio.sleep(RETRY * 1.5)
        assert not following.done()
        await first.release()
        released = time.monotonic()
        await asyncio.wait_for(following, 4 * LEASE)
        assert time.monotonic() - released < LEASE - 0.5  # not the lease duration: a retry
        assert holder(api, namespace) == "second" and not first.leading
        await first.release()  # no longer its own: left alone
        assert holder(api, namespace) == "second"

    run(kube, monkeypatch, scenario, namespace)


def test_a_leader_whose_lease_is_taken_stops_at_once(
    kube: LocalKube, api: Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/operator"

    async def scenario(candidate: Callable[[str], LeaseElector]) -> None:
        leader = candidate("leader")
        await leader.acquire()
        holding = asyncio.create_task(leader.hold())
        await asyncio.sleep(RETRY)
        lease = api.checked("GET", path)
        lease["spec"]["holderIdentity"] = "someone-else"
        api.checked("PUT", path, lease)
        taken = time.monotonic()
        await asyncio.wait_for(holding, RENEW + 2 * RETRY)
        assert time.monotonic() - taken < RENEW  # it saw the new holder: no deadline to wait
        assert not leader.leading and leader.holder is None

    run(kube, monkeypatch, scenario, namespace)


def test_candidates_racing_for_a_free_lease_elect_exactly_one(
    kube: LocalKube, api: Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(candidate: Callable[[str, str], LeaseElector]) -> None:
        for round_ in range(4):  # created at once, or (round 3+) taken over at once
            lease = f"race-{round_ % 2}"
            racers = [candidate(f"c{index}", lease) for index in range(3)]
            if round_ >= 2:  # an expired Lease: every racer has seen it, then it expires
                for racer in racers:
                    await racer._attempt()
                await asyncio.sleep(LEASE + 0.5)
            won = await asyncio.gather(*(racer._attempt() for racer in racers))
            assert sum(won) == 1, won  # the resourceVersion lets one write through
            assert holder(api, namespace, lease) == f"c{won.index(True)}"

    run(kube, monkeypatch, scenario, namespace)
