"""Fuzzing the control API: whatever a caller sends, a clear 4xx with a reason or a valid
result; never a 500, a hang, or a changed table after a refused request.

A real pod in process (reference engine table, executor with a checkpoint, the aiohttp app
on a real port), and hypothesis drawing short sequences of calls: mostly well-formed ones
with hostile values (ids and revisions at and past every bound, wrong types, wrong shapes,
stale or future revisions), also arbitrary JSON, arbitrary bytes and bad credentials.  Each
example starts from the same pod state, so a failure replays from the example database
(``tests/sidecar/hypothesis-db``: commit what it gains, CI replays it first).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from eplb_core.placements import placement_error
from eplb_sidecar.api import Info, Problem, Result
from eplb_sidecar.checkpoint import CheckpointReader
from eplb_sidecar.engine.config import EngineConfig

from .conftest import assert_slots_hold_their_experts, snapshot
from .control import TOKEN, Answer, ControlServer, control_server, raw_request

DATABASE = DirectoryBasedExampleDatabase(Path(__file__).parent / "hypothesis-db")
EXAMPLES = 200
CALL_SECONDS = 10.0  # a call that takes longer is a hang
CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")

# Values at and past every bound a request field has, and of every JSON type.
HOSTILE_INTS = [0, -1, 1, 7, 8, 9, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]
ODD_VALUES = [None, True, False, 1.0, 1.5, -0.0, 1e308, "1", "x", "", [], {}, [[1]], {"0": 1}]


def any_json() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )


class Pod:
    """The pod under test, reset to its first state before every example."""

    def __init__(self, server: ControlServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.table = server.executor.table
        self.first = snapshot(self.table)

    def reset(self) -> None:
        live = {
            "routing": self.table.routing,
            "revisions": self.table.revisions,
            "counter_base": self.table.counter_base,
        }
        live.update({f"weights.{name}": w for name, w in self.table.weights.items()})
        for key, value in self.first.items():
            live[key].copy_(value)
        self.server.executor.staged.clear()

    def call(self, *request: Any) -> Answer:
        """``request``: (method, path, body, headers, token), as :func:`draw_call` makes."""
        coroutine = raw_request(self.server.port, *request, timeout=CALL_SECONDS)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(CALL_SECONDS + 5)


@contextmanager
def running_pod(
    directory: Path, config: EngineConfig, checkpoint: CheckpointReader
) -> Iterator[Pod]:
    """The pod served by an event loop of its own (hypothesis runs examples synchronously)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    context = control_server(directory, config, checkpoint)
    server = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(60)
    try:
        yield Pod(server, loop)
    finally:
        asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


# Which part of a well-formed call is hostile (one at most, so the rest gets through to it).
ASPECTS = ["none"] * 6 + ["revision", "layer", "row", "transfer", "timeout", "field"]


def draw_call(
    data: st.DataObject, pod: Pod, config: EngineConfig, kind: str | None = None
) -> tuple[Any, ...]:
    """(method, path, body, headers, token) of one call: mostly well-formed ones with at
    most one hostile part, drawn against the pod's state (its staged revisions and layers);
    also arbitrary JSON, arbitrary bytes, other routes and bad credentials."""
    executor = pod.server.executor
    num_slots = config.ranks * config.slots_per_rank
    newest = int(pod.table.revisions.max())
    staged = sorted({s.revision for s in executor.info().staged})
    kinds = ["prepare"] * 3 + ["commit", "abort", "info", "json", "bytes", "route"]
    if staged:  # what was staged is worth committing (or aborting)
        kinds += ["commit"] * 6 + ["abort"]
    kind = kind or data.draw(st.sampled_from(kinds), label="kind")
    aspect = data.draw(st.sampled_from(ASPECTS), label="hostile part")
    hostile = st.sampled_from(HOSTILE_INTS + ODD_VALUES)

    def pick(valid: st.SearchStrategy[Any], part: str) -> Any:
        return data.draw(hostile if aspect == part else valid, label=part)

    layer_ids = st.integers(0, config.layers - 1)
    # Valid revisions: newer ones to prepare; what is staged (or served) to commit or abort.
    revisions = (
        [newest + 1, newest + 2, *staged]
        if kind == "prepare"
        else ([*staged] * 3 + [r for r in (newest, newest + 1) if r >= 1])
    )
    fields: dict[str, Any] = {"revision": pick(st.sampled_from(revisions), "revision")}
    if kind == "prepare":
        chosen = data.draw(st.sets(layer_ids, min_size=1), label="layers")
        rows = {str(layer): data.draw(valid_rows(config, num_slots)) for layer in chosen}
        if aspect == "row":
            victim = data.draw(st.sampled_from(sorted(rows)))
            row = rows[victim]
            at = data.draw(st.integers(0, len(row)))
            rows[victim] = data.draw(
                hostile.map(lambda v: [*row[:at], v, *row[at + 1 :]])
                | st.lists(st.integers(-2, config.experts + 1), max_size=num_slots + 2)
                | any_json()
            )
        if aspect == "layer":
            rows[data.draw(hostile.map(str) | st.sampled_from(["x", " 1", "1.0", "0x1", ""]))] = (
                data.draw(valid_rows(config, num_slots))
            )
        fields["layers"] = rows
        if data.draw(st.booleans(), label="with transfer") or aspect == "transfer":
            fields["transfer"] = (
                pick(st.just({"session": "s", "store": "127.0.0.1:1", "ranks": [0]}), "transfer")
                if aspect != "transfer"
                else data.draw(hostile_transfers())
            )
    elif kind in ("commit", "abort"):
        everything = list(range(config.layers))
        valid_layers = st.sampled_from(
            [sorted(executor.staged)] * 3 + [everything] if executor.staged else [everything]
        )
        if data.draw(st.integers(0, 3), label="other layers") == 0:
            valid_layers = st.lists(layer_ids, min_size=1, max_size=config.layers + 1)
        layers = pick(valid_layers, "layer")
        if kind == "abort" and data.draw(st.booleans()):
            layers = None
        fields["layers"] = layers
    if kind in ("prepare", "commit"):
        fields["timeout_seconds"] = pick(st.just(30), "timeout")
    if aspect == "field":
        fields[data.draw(st.sampled_from(["extra", "Revision", "layer"]))] = 1
        if data.draw(st.booleans()):
            del fields["revision"]
    method, path, body = "POST", f"/v1/{kind}", json.dumps(fields).encode()
    if kind == "info":
        method, path, body = (
            "GET",
            data.draw(
                st.sampled_from(
                    [
                        "/v1/info",
                        "/v1/info?placement=true",
                        "/v1/info?placement=%ff",
                        "/v1/info?placement=1&placement=0",
                    ]
                )
            ),
            b"",
        )
    elif kind in ("json", "bytes"):
        path = data.draw(st.sampled_from(["/v1/prepare", "/v1/commit", "/v1/abort"]))
        content = (
            any_json().map(lambda v: json.dumps(v).encode())
            if kind == "json"
            else (st.binary(max_size=300))
        )
        body = data.draw(content, label=kind)
    elif kind == "route":
        method = data.draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]))
        path = data.draw(
            st.sampled_from(
                [
                    "/v1/",
                    "/v1/prepare/x",
                    "/v1/PREPARE",
                    "/v2/info",
                    "/v1/info/..",
                    "/healthz",
                    "/metrics",
                ]
            )
        )
    content_type = data.draw(
        st.sampled_from(
            [b"application/json"] * 3 + [b"text/plain", b"", b"application/json; charset=klingon"]
        )
    )
    token = data.draw(
        st.sampled_from(
            [TOKEN.encode()] * 16
            + [None, b"wrong", b"\xff\xfe", TOKEN.encode() + b"x", "tökén".encode()]
        ),
        label="token",
    )
    return method, path, body, [(b"Content-Type", content_type)], token


def valid_rows(config: EngineConfig, num_slots: int) -> st.SearchStrategy[list[int]]:
    """``[P]`` phy2log rows giving every expert a replica."""
    extra = st.lists(
        st.integers(0, config.experts - 1),
        min_size=num_slots - config.experts,
        max_size=num_slots - config.experts,
    )
    return st.tuples(extra, st.permutations(range(num_slots))).map(
        lambda pair: [(list(range(config.experts)) + pair[0])[i] for i in pair[1]]
    )


def hostile_transfers() -> st.SearchStrategy[Any]:
    return (
        st.fixed_dictionaries(
            {
                "session": st.sampled_from(["s", "", "a b", "x" * 201, 1]),
                "store": st.sampled_from(["127.0.0.1:1", "h:0", "h:99999", "nohost", ":1", None]),
                "ranks": st.sampled_from([[0], [0, 1], [1], [], [0, 0], [-1], [2**64], "0"]),
                "secret": st.sampled_from(["k" * 43, "short", None, 1, "k" * 43 + "!"]),
            }
        )
        | any_json()
    )


def check_answer(
    pod: Pod,
    call: tuple[Any, ...],
    answer: Answer,
    before: dict[str, torch.Tensor],
    staged_before: Any,
) -> None:
    path = call[1]
    assert answer.status < 500, (call, answer)
    table = pod.table
    if answer.status != 200:
        problem = Problem.model_validate_json(answer.body)
        assert CAMEL_CASE.match(problem.reason) and problem.message, problem
        assert 400 <= answer.status < 500
        after = snapshot(table)
        assert all(torch.equal(after[k], v) for k, v in before.items()), (call, "changed")
        assert pod.server.executor.info().staged == staged_before, (call, "staging changed")
        return
    if path.startswith("/v1/info"):
        Info.model_validate_json(answer.body)
    elif path.startswith("/v1/"):
        result = Result.model_validate_json(answer.body)
        if path == "/v1/commit":
            for layer in result.layers:
                assert int(table.revisions[layer.layer]) == result.revision
        else:  # prepare and abort touch staging only
            after = snapshot(table)
            assert all(torch.equal(after[k], v) for k, v in before.items()), call
    # DESIGN §5 whatever happened: every layer serves a usable placement, exactly.
    assert placement_error(table.routing, table.layout.num_slots, table.layout.experts) is None
    assert_slots_hold_their_experts(table, pod.server.engine.config.seed)


STATS: dict[str, int] = {}


def test_no_request_gets_a_500_a_hang_or_a_change_it_was_refused_for(
    tmp_path: Path, config: EngineConfig, checkpoint: CheckpointReader
) -> None:
    with running_pod(tmp_path, config, checkpoint) as pod:

        @settings(
            max_examples=EXAMPLES,
            database=DATABASE,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def calls(data: st.DataObject) -> None:
            pod.reset()
            STATS["examples"] = STATS.get("examples", 0) + 1
            for index in range(data.draw(st.integers(1, 4), label="calls")):
                # Half the sequences start with a prepare: later calls then find staging.
                first = "prepare" if index == 0 and data.draw(st.booleans()) else None
                call = draw_call(data, pod, config, first)
                before = snapshot(pod.table)
                staged_before = pod.server.executor.info().staged
                started = time.monotonic()
                answer = pod.call(*call)
                assert time.monotonic() - started < CALL_SECONDS, call
                outcome = f"{call[1].split('?')[0]} {answer.status}"
                STATS[outcome] = STATS.get(outcome, 0) + 1
                check_answer(pod, call, answer, before, staged_before)

        started = time.monotonic()
        calls()
        print(
            f"\nfuzz: {STATS.pop('examples')} examples in {time.monotonic() - started:.1f} s; "
            f"answers: {dict(sorted(STATS.items()))}"
        )
