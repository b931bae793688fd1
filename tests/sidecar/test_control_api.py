"""The control API refuses hostile input with a 4xx and a reason, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eplb_sidecar import refusals
from eplb_sidecar.api import MAX_REVISION, Reason, largest_request_bytes
from eplb_sidecar.checkpoint import CheckpointReader
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.server import BODY_LIMIT_FLOOR, STATUS, body_limit

from .conftest import assert_slots_hold_their_experts, assert_unchanged, snapshot
from .control import Answer, ControlServer, control_server
from .test_executor import rebalanced

JSON = [(b"Content-Type", b"application/json")]


@pytest.fixture
async def pod(
    tmp_path: Path, config: EngineConfig, checkpoint: CheckpointReader
) -> AsyncIterator[ControlServer]:
    async with control_server(tmp_path, config, checkpoint) as server:
        yield server


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def assert_problem(answer: Answer, status: int, reason: str, fragment: str = "") -> None:
    assert answer.status == status, answer
    problem = answer.json()
    assert problem["reason"] == reason, problem
    assert fragment in problem["message"], problem


async def test_a_revision_past_int64_is_refused_at_prepare_and_commit_changes_nothing(
    pod: ControlServer, config: EngineConfig
) -> None:
    """The issue's reproduction: revision 2**63 used to stage, then half-apply at commit."""
    table = pod.executor.table
    new = rebalanced(config)
    state = snapshot(table)
    layers = {"0": new[0].tolist(), "1": new[1].tolist()}
    prepared = await pod.request("POST", "/v1/prepare", body(revision=2**63, layers=layers), JSON)
    assert_problem(prepared, 400, "InvalidRequest", "revision")
    committed = await pod.request("POST", "/v1/commit", body(revision=2**63, layers=[0, 1]), JSON)
    assert_problem(committed, 400, "InvalidRequest", "revision")
    assert_unchanged(table, state)
    assert pod.executor.info().staged == []

    # The largest revision an int64 holds goes all the way.
    prepared = await pod.request(
        "POST", "/v1/prepare", body(revision=MAX_REVISION, layers=layers), JSON
    )
    assert prepared.status == 200, prepared
    committed = await pod.request(
        "POST", "/v1/commit", body(revision=MAX_REVISION, layers=[0, 1]), JSON
    )
    assert committed.status == 200, committed
    assert table.revisions.tolist() == [MAX_REVISION, MAX_REVISION, 0]
    assert table.routing[:2].tolist() == new[:2].tolist()
    assert_slots_hold_their_experts(table, config.seed)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"revision": 1, "layers": {"0": "EXPERTS"}}, "layers.0."),  # an id of 2**64
        ({"revision": 1, "layers": {"0": "NEGATIVE"}}, "layers.0."),
        ({"revision": 1, "layers": {"0": "FLOAT"}}, "layers.0."),
        ({"revision": 1, "layers": {"0": "BOOL"}}, "layers.0."),
        ({"revision": 1, "layers": {str(2**64): "GOOD"}}, "layers"),
        ({"revision": 1, "layers": {"0": "GOOD"}, "timeout_seconds": 1e400}, "timeout_seconds"),
        (
            {
                "revision": 1,
                "layers": {"0": "GOOD"},
                "transfer": {"session": "s", "store": "h:99999", "ranks": [0]},
            },
            "transfer.store",
        ),
        (
            {
                "revision": 1,
                "layers": {"0": "GOOD"},
                "transfer": {"session": "s", "store": "h:1", "ranks": [2**64]},
            },
            "transfer.ranks",
        ),
    ],
    ids=[
        "id-2**64",
        "negative-id",
        "float-id",
        "bool-id",
        "layer-2**64",
        "infinite-timeout",
        "port-99999",
        "rank-2**64",
    ],
)
async def test_integers_out_of_range_are_400_with_the_field_and_change_nothing(
    pod: ControlServer, config: EngineConfig, fields: dict[str, object], fragment: str
) -> None:
    good = rebalanced(config)[0].tolist()
    hostile = {"EXPERTS": [*good[:-1], 2**64], "NEGATIVE": [*good[:-1], -1],
               "FLOAT": [*good[:-1], 1.0], "BOOL": [*good[:-1], True], "GOOD": good}  # fmt: skip
    layers = {k: hostile[v] for k, v in fields["layers"].items()}  # type: ignore[attr-defined]
    state = snapshot(pod.executor.table)
    text = json.dumps({**fields, "layers": layers}).replace("Infinity", "1e400")
    answer = await pod.request("POST", "/v1/prepare", text.encode(), JSON)
    assert_problem(answer, 400, "InvalidRequest", fragment)
    assert_unchanged(pod.executor.table, state)
    assert pod.executor.info().staged == []


async def test_a_non_utf8_authorization_header_is_401(pod: ControlServer) -> None:
    for token in (b"\xff\xfe\xfd", "tökén".encode("latin-1"), "tökén".encode()):
        answer = await pod.request("GET", "/v1/info", token=token)
        assert_problem(answer, 401, "Unauthorized")


async def test_a_missing_token_file_is_503_until_it_appears(pod: ControlServer) -> None:
    assert (await pod.request("GET", "/v1/info")).status == 200
    pod.token_file.unlink()
    assert_problem(await pod.request("GET", "/v1/info"), 503, "TokenUnavailable", "token file")
    pod.token_file.write_text("s3cret-token\n")
    os.utime(pod.token_file, (1, 1))  # whatever its time, a file that reappears is read
    assert (await pod.request("GET", "/v1/info")).status == 200


async def test_the_body_limit_comes_from_the_largest_valid_request(
    pod: ControlServer, config: EngineConfig
) -> None:
    layout = pod.executor.table.layout
    assert body_limit(layout) == BODY_LIMIT_FLOOR  # a small table: the floor
    # DeepSeek-V3's shape (58 layers, 256 experts + 32 redundant on 32 ranks): still the floor;
    # the CRD's largest layers and slots: the derived size.
    assert largest_request_bytes(58, 288, 256, 32) < BODY_LIMIT_FLOOR
    assert largest_request_bytes(1024, 4096, 8192, 512) > 4 * BODY_LIMIT_FLOOR
    # The derivation bounds a real largest request (every layer, widest ids, longest blocks).
    num_slots = layout.num_slots
    widest = {
        "revision": MAX_REVISION,
        "layers": {str(layer): [layout.experts - 1] * num_slots for layer in range(layout.layers)},
        "transfer": {"session": "s" * 200, "store": "h" * 294 + ":65535",
                     "ranks": list(range(layout.ranks)), "secret": "x" * 256},
        "timeout_seconds": 3599.9999999999995,
    }  # fmt: skip
    largest = largest_request_bytes(layout.layers, num_slots, layout.experts, layout.ranks)
    assert len(json.dumps(widest)) <= largest


async def test_a_body_over_the_limit_is_413_without_buffering_it(pod: ControlServer) -> None:
    limit = body_limit(pod.executor.table.layout)
    state = snapshot(pod.executor.table)
    chunk = b"1, " * (1 << 16)  # 192 KiB, sent 1024 times: 192 MiB in all
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        answer = await pod.request("POST", "/v1/prepare", chunk, JSON, repeat=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_problem(answer, 413, "RequestTooLarge", str(limit))
    # What the server allocated meanwhile is about the limit, not the body.
    assert peak < 4 * limit, f"{peak / 2**20:.1f} MiB allocated for a refused body"
    assert_unchanged(pod.executor.table, state)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"[" * 100_000, "not JSON"),
        (b"\xff\xfe\x00{", "not JSON"),
        (b'{"revision": 1, "layers": {"0": [' + b"9" * 5000 + b"]}}", "not JSON"),
        (b"[]", "body"),
        (b'"prepare"', "body"),
        (b"", "not JSON"),
    ],
    ids=["deep-nesting", "not-utf8", "5000-digit-number", "a-list", "a-string", "empty"],
)
async def test_a_body_that_is_not_a_request_is_400(
    pod: ControlServer, payload: bytes, fragment: str
) -> None:
    state = snapshot(pod.executor.table)
    for path in ("/v1/prepare", "/v1/commit", "/v1/abort"):
        answer = await pod.request("POST", path, payload, JSON)
        assert_problem(answer, 400, "InvalidRequest", fragment)
    assert_unchanged(pod.executor.table, state)


async def test_unknown_paths_and_methods_are_problems_too(pod: ControlServer) -> None:
    assert_problem(await pod.request("GET", "/v1/nothing"), 404, "NotFound")
    assert_problem(await pod.request("GET", "/v1/prepare"), 405, "MethodNotAllowed")
    assert_problem(await pod.request("GET", "/v1/info", token=None), 401, "Unauthorized")


async def test_concurrent_hostile_calls_leave_the_pod_serving(
    pod: ControlServer, config: EngineConfig
) -> None:
    state = snapshot(pod.executor.table)
    hostile = [
        pod.request("POST", "/v1/prepare", body(revision=2**63, layers={"0": [0]}), JSON),
        pod.request("GET", "/v1/info", token=b"\xff"),
        pod.request("POST", "/v1/commit", b"[" * 50_000, JSON),
    ] * 5
    answers = await asyncio.gather(*hostile)
    assert {a.status for a in answers} == {400, 401}
    assert_unchanged(pod.executor.table, state)
    assert (await pod.request("GET", "/v1/info")).status == 200


def test_every_refusal_has_one_reason_and_one_status() -> None:
    """The executor's domain errors and the server's table cover the same reasons, and the
    statuses are the documented ones (400 never possible, 409 not now, 503 retry, 500 the
    pod is in trouble)."""
    classes = refusals.RefusedError.__subclasses__()
    assert sorted(c.reason.value for c in classes) == sorted(r.value for r in Reason)
    assert set(STATUS) == set(Reason)
    by_status: dict[int, set[str]] = {}
    for reason, status in STATUS.items():
        by_status.setdefault(status, set()).add(reason.value)
    assert by_status == {
        400: {"InvalidRequest", "InvalidLayer", "InvalidPlacement", "InvalidTransfer"},
        413: {"RequestTooLarge"},
        409: {"OutOfOrder", "NotPrepared", "PlacementMismatch", "NoSource"},
        503: {"TransferFailed", "TransferCorrupt", "EngineBusy", "CommitFailed"},
        500: {"CheckpointUnreadable", "RollbackFailed"},
    }


async def test_the_executors_refusals_reach_the_caller_as_status_and_reason(
    pod: ControlServer, config: EngineConfig
) -> None:
    """What the executor refuses (a domain error) answers as its status and Problem, and
    changes nothing."""
    new = rebalanced(config)
    P = config.ranks * config.slots_per_rank
    prepared = await pod.request(
        "POST", "/v1/prepare", body(revision=2, layers={"0": new[0].tolist()}), JSON
    )
    assert prepared.status == 200, prepared
    assert (
        await pod.request("POST", "/v1/commit", body(revision=2, layers=[0]), JSON)
    ).status == 200
    state = snapshot(pod.executor.table)
    transfer = {"session": "s", "store": "127.0.0.1:1", "ranks": [1]}
    calls = [
        ("commit", body(revision=3, layers=[1]), 409, "NotPrepared", "not prepared"),
        ("prepare", body(revision=1, layers={"0": new[0].tolist()}), 409, "OutOfOrder", "newer"),
        ("prepare", body(revision=3, layers={"1": [0] * P}), 400, "InvalidPlacement", "replica"),
        ("prepare", body(revision=3, layers={"7": new[0].tolist()}), 400, "InvalidLayer", "7"),
        (
            "prepare",
            body(revision=3, layers={"1": new[1].tolist()}, transfer=transfer),
            400,
            "InvalidTransfer",
            "not in transfer.ranks",
        ),
    ]
    for phase, payload, status, reason, fragment in calls:
        answer = await pod.request("POST", f"/v1/{phase}", payload, JSON)
        assert_problem(answer, status, reason, fragment)
    assert_unchanged(pod.executor.table, state)
    assert pod.executor.info().staged == []
