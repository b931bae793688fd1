"""prepare / commit / abort on one pod, in process: exact weights, order, refusals."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eplb_local.engine.reference import ReferenceEngine
from eplb_sidecar.api import AbortRequest, CommitRequest, PrepareRequest
from eplb_sidecar.checkpoint import CheckpointReader
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.probe import ProbeRequest, merge_probe_parts
from eplb_sidecar.engine.startup import identity_placement
from eplb_sidecar.exporter import SidecarMetrics
from eplb_sidecar.refusals import (
    EngineBusyError,
    InvalidLayerError,
    InvalidPlacementError,
    NoSourceError,
    NotPreparedError,
    OutOfOrderError,
    RefusedError,
)
from eplb_sidecar.shuffle import ShuffleExecutor

from .conftest import assert_slots_hold_their_experts, assert_unchanged, snapshot


@pytest.fixture
def pods(
    tmp_path: Path, config: EngineConfig, checkpoint: CheckpointReader
) -> list[tuple[ReferenceEngine, ShuffleExecutor]]:
    """Both ranks in this process, each sourcing missing experts from the checkpoint.

    The executor attaches to the table as the sidecar process would (its own mappings and
    its own open of the step lock).
    """
    out = []
    for rank in range(config.ranks):
        engine = ReferenceEngine(config.model_copy(update={"rank": rank}), tmp_path / f"t{rank}")
        table = ExpertTable.attach(tmp_path / f"t{rank}")
        out.append((engine, ShuffleExecutor(table, f"pod-{rank}", None, checkpoint)))
    return out


def rebalanced(config: EngineConfig, seed: int = 3) -> torch.Tensor:
    """``[L, P]``: every expert once, the rest duplicates, shuffled per layer."""
    num_slots = config.ranks * config.slots_per_rank
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(config.layers):
        row = torch.cat([torch.arange(config.experts),
                         torch.randint(config.experts, (num_slots - config.experts,),
                                       generator=generator)])  # fmt: skip
        rows.append(row[torch.randperm(num_slots, generator=generator)])
    return torch.stack(rows)


def probe(pods: list[tuple[ReferenceEngine, ShuffleExecutor]]) -> torch.Tensor:
    return merge_probe_parts([engine.probe(ProbeRequest(tokens=12)) for engine, _ in pods])


def prepare_all(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], request: PrepareRequest
) -> None:
    for _, executor in pods:
        executor.prepare(request)


def test_commit_makes_every_slot_exact_and_outputs_identical(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    before = probe(pods)
    new = rebalanced(config)
    request = PrepareRequest(
        revision=1, layers={layer: new[layer].tolist() for layer in range(config.layers)}
    )
    states = [snapshot(engine.table) for engine, _ in pods]
    prepare_all(pods, request)
    for (engine, _), state in zip(pods, states, strict=True):
        assert_unchanged(engine.table, state)  # staged, not live
    for engine, executor in pods:
        result = executor.commit(CommitRequest(revision=1, layers=list(range(config.layers))))
        assert {r.outcome for r in result.layers} == {"committed"}
        assert torch.equal(engine.table.routing, new)
        assert engine.table.revisions.tolist() == [1] * config.layers
        assert_slots_hold_their_experts(engine.table, config.seed)
    assert torch.equal(probe(pods), before)


def test_abort_leaves_everything_as_it_was(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    new = rebalanced(config)
    states = [snapshot(engine.table) for engine, _ in pods]
    prepare_all(pods, PrepareRequest(revision=4, layers={0: new[0].tolist(), 2: new[2].tolist()}))
    for (engine, executor), state in zip(pods, states, strict=True):
        assert [s.layers for s in executor.info().staged] == [[0, 2]]
        result = executor.abort(AbortRequest(revision=4))
        assert [r.outcome for r in result.layers] == ["aborted", "aborted"]
        assert executor.info().staged == []
        assert_unchanged(engine.table, state)
        with pytest.raises(NotPreparedError):
            executor.commit(CommitRequest(revision=4, layers=[0]))


def test_calls_are_idempotent_by_revision_and_layer(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    engine, executor = pods[0]
    new = rebalanced(config)
    request = PrepareRequest(revision=2, layers={1: new[1].tolist()})
    assert executor.prepare(request).layers[0].outcome == "staged"
    assert executor.prepare(request).layers[0].outcome == "already-staged"
    commit = CommitRequest(revision=2, layers=[1])
    assert executor.commit(commit).layers[0].outcome == "committed"
    state = snapshot(engine.table)
    assert executor.commit(commit).layers[0].outcome == "already-committed"
    assert executor.prepare(request).layers[0].outcome == "already-committed"
    assert_unchanged(engine.table, state)


@pytest.mark.parametrize(
    ("scenario", "refusal"),
    [
        ("older-revision", OutOfOrderError),
        ("same-revision-other-placement", OutOfOrderError),
        ("newer-while-staged", OutOfOrderError),
        ("commit-unprepared", NotPreparedError),
        ("abort-older-than-staged", OutOfOrderError),
    ],
)
def test_out_of_order_calls_are_refused_and_change_nothing(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]],
    config: EngineConfig,
    scenario: str,
    refusal: type[RefusedError],
) -> None:
    engine, executor = pods[0]
    first, second = rebalanced(config, seed=1), rebalanced(config, seed=2)
    executor.prepare(PrepareRequest(revision=5, layers={0: first[0].tolist()}))
    executor.commit(CommitRequest(revision=5, layers=[0]))
    executor.prepare(PrepareRequest(revision=6, layers={1: first[1].tolist()}))
    state, staged = snapshot(engine.table), executor.info().staged
    calls = {
        "older-revision": lambda: executor.prepare(
            PrepareRequest(revision=4, layers={0: second[0].tolist()})),
        "same-revision-other-placement": lambda: executor.prepare(
            PrepareRequest(revision=5, layers={0: second[0].tolist()})),
        "newer-while-staged": lambda: executor.prepare(
            PrepareRequest(revision=7, layers={1: second[1].tolist()})),
        "commit-unprepared": lambda: executor.commit(CommitRequest(revision=6, layers=[1, 2])),
        "abort-older-than-staged": lambda: executor.abort(AbortRequest(revision=5, layers=[1])),
    }  # fmt: skip
    with pytest.raises(RefusedError) as refused:
        calls[scenario]()
    assert type(refused.value) is refusal
    assert_unchanged(engine.table, state)
    assert executor.info().staged == staged


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda row: [0] * len(row), "has no replica"),
        (lambda row: row[:-1], "slots"),
        (lambda row: [*row[:-1], 99], "outside [0, 8)"),
        (lambda row: [*row[:-1], -1], "outside [0, 8)"),
    ],
    ids=["expert-without-replica", "wrong-length", "id-too-large", "negative-id"],
)
def test_bad_prepare_is_refused_with_a_reason_and_changes_nothing(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]],
    config: EngineConfig,
    mutate: object,
    message: str,
) -> None:
    engine, executor = pods[0]
    good = rebalanced(config)
    state = snapshot(engine.table)
    bad = mutate(good[2].tolist())  # type: ignore[operator]
    # Built without the model's own checks (negative ids stop there): the executor checks
    # again, against this pod's shape.
    request = PrepareRequest.model_construct(
        revision=1, layers={0: good[0].tolist(), 2: bad}, transfer=None, timeout_seconds=30.0
    )
    with pytest.raises(InvalidPlacementError) as refused:
        executor.prepare(request)
    assert message in refused.value.message
    assert_unchanged(engine.table, state)
    assert executor.info().staged == []
    with pytest.raises(InvalidLayerError):
        executor.prepare(PrepareRequest(revision=1, layers={config.layers: good[0].tolist()}))


def test_an_expert_no_one_can_send_without_a_checkpoint_is_refused(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    engine, with_checkpoint = pods[0]
    executor = ShuffleExecutor(with_checkpoint.table, "pod-0", peers=None, checkpoint=None)
    state = snapshot(engine.table)
    with pytest.raises(NoSourceError) as refused:
        executor.prepare(PrepareRequest(revision=1, layers={0: rebalanced(config)[0].tolist()}))
    assert "no checkpoint" in refused.value.message
    assert_unchanged(engine.table, state)


def test_a_local_permutation_copies_each_slot_once_through_cycles(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    engine, executor = pods[0]
    S = config.slots_per_rank
    row = identity_placement(config)[0].clone()
    row[:S] = row[:S].roll(1)  # one S-cycle on rank 0, rank 1 unchanged
    result = executor.prepare(PrepareRequest(revision=1, layers={0: row.tolist()}))
    assert result.layers[0].moves == S and result.layers[0].bytes_checkpoint == 0
    executor.commit(CommitRequest(revision=1, layers=[0]))
    assert_slots_hold_their_experts(engine.table, config.seed)


def test_commit_waits_for_the_step_boundary(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    engine, executor = pods[0]
    executor.prepare(PrepareRequest(revision=1, layers={0: rebalanced(config)[0].tolist()}))
    in_step, step_done = threading.Event(), threading.Event()

    def long_step() -> None:
        with engine.table.engine_step():
            in_step.set()
            time.sleep(0.4)
            step_done.set()

    thread = threading.Thread(target=long_step)
    thread.start()
    in_step.wait()
    with pytest.raises(EngineBusyError):
        executor.commit(CommitRequest(revision=1, layers=[0], timeout_seconds=0.05))
    assert int(engine.table.revisions[0]) == 0
    executor.commit(CommitRequest(revision=1, layers=[0]))
    assert step_done.is_set(), "commit wrote while the engine was inside a step"
    thread.join()
    assert int(engine.table.revisions[0]) == 1


def test_metrics_follow_the_slots_and_restart_at_zero_when_a_slot_changes(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    engine, executor = pods[0]
    metrics = SidecarMetrics(engine.table)
    for _ in range(5):
        engine.step()

    def series() -> dict[tuple[str, str, str], float]:
        families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
        tokens = next(f for f in families if f.name == "eplb_expert_tokens")
        return {
            (s.labels["layer"], s.labels["slot"], s.labels["expert"]): s.value
            for s in tokens.samples if s.name == "eplb_expert_tokens_total"
        }  # fmt: skip

    before = series()
    assert len(before) == config.layers * config.slots_per_rank
    for (layer, slot, _), value in before.items():
        assert value == engine.table.counters[int(layer), int(slot)]
    new = rebalanced(config)
    executor.prepare(PrepareRequest(revision=1, layers={0: new[0].tolist()}))
    executor.commit(CommitRequest(revision=1, layers=[0]))
    after = series()
    assert len(after) == config.layers * config.slots_per_rank
    for slot in range(config.slots_per_rank):
        expert = str(int(new[0, slot]))
        assert ("0", str(slot), expert) in after
        if int(new[0, slot]) != int(identity_placement(config)[0, slot]):
            assert after[("0", str(slot), expert)] == 0.0


def test_balancedness_is_mean_over_max_of_the_group_load_in_the_window(
    pods: list[tuple[ReferenceEngine, ShuffleExecutor]], config: EngineConfig
) -> None:
    engine, _ = pods[0]
    metrics = SidecarMetrics(engine.table)

    def gauge() -> dict[str, float]:
        families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
        return {
            s.labels["layer"]: s.value
            for f in families if f.name == "eplb_layer_balancedness" for s in f.samples
        }  # fmt: skip

    engine.step()
    assert gauge() == {}  # one look at the counters is no window yet
    start = engine.table.group_load.clone()
    for _ in range(3):
        engine.step()
    load = (engine.table.group_load - start).double()
    want = (load.mean(dim=1) / load.max(dim=1).values).tolist()
    got = gauge()
    assert [got[str(layer)] for layer in range(config.layers)] == pytest.approx(want)
