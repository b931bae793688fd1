"""The reference engine: routing over replicas, counters, skew and drift, probes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from eplb_local.engine.reference import ReferenceEngine
from eplb_sidecar.contract.layout import TableLayout
from eplb_sidecar.contract.table import ExpertTable, TableNotReadyError
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.probe import ProbeMismatchError, ProbeRequest, merge_probe_parts
from eplb_sidecar.engine.routing import choose_slots, replica_table

from .conftest import assert_slots_hold_their_experts


def test_tokens_of_an_expert_are_spread_evenly_over_its_replicas() -> None:
    phy2log = torch.tensor([0, 1, 2, 0, 1, 0, 3, 2])
    log2phy, counts = replica_table(phy2log, 4)
    assert counts.tolist() == [3, 2, 2, 1]
    assert log2phy[0].tolist() == [0, 3, 5]
    experts = torch.zeros(300, 1, dtype=torch.int64)
    slots = choose_slots(experts, torch.arange(300), log2phy, counts)
    assert torch.bincount(slots.flatten(), minlength=8)[[0, 3, 5]].tolist() == [100, 100, 100]
    assert bool((phy2log[slots] == experts).all())


def test_counters_count_the_tokens_routed_to_local_slots(
    tmp_path: Path, config: EngineConfig
) -> None:
    engine = ReferenceEngine(config, tmp_path)
    assert_slots_hold_their_experts(engine.table, config.seed)
    for _ in range(4):
        engine.step()
    tokens = 4 * config.workload.tokens_per_step * config.top_k
    assert engine.table.group_load.sum(dim=1).tolist() == [tokens] * config.layers
    assert torch.equal(engine.table.counters.sum(dim=1), engine.table.group_load[:, config.rank])


def imbalance(engine: ReferenceEngine, steps: int = 8) -> float:
    start = engine.table.group_load.clone()
    for _ in range(steps):
        engine.step()
    load = (engine.table.group_load - start).double()
    return float((load.max(dim=1).values / load.mean(dim=1)).mean())


def test_skew_sets_the_imbalance_and_shift_drifts_the_hot_experts(
    tmp_path: Path, config: EngineConfig
) -> None:
    engine = ReferenceEngine(config, tmp_path)
    engine.set_workload(Workload(skew=0.0, tokens_per_step=512, step_interval=0))
    uniform = imbalance(engine)
    engine.set_workload(Workload(skew=2.0, tokens_per_step=512, step_interval=0))
    skewed = imbalance(engine)
    assert uniform < 1.2 < skewed

    def hot_slots() -> torch.Tensor:
        start = engine.table.counters.clone()
        imbalance(engine, steps=4)
        return (engine.table.counters - start).argmax(dim=1)

    before = hot_slots()
    engine.set_workload(Workload(skew=2.0, shift=1, tokens_per_step=512, step_interval=0))
    assert not torch.equal(hot_slots(), before)


def test_probe_parts_must_cover_every_pair_exactly_once(
    tmp_path: Path, config: EngineConfig
) -> None:
    engines = [
        ReferenceEngine(config.model_copy(update={"rank": r}), tmp_path / str(r))
        for r in range(config.ranks)
    ]
    parts = [engine.probe(ProbeRequest(tokens=10)) for engine in engines]
    merged = merge_probe_parts(parts)
    assert merged.shape == (config.layers, 10, config.hidden)
    assert torch.equal(merge_probe_parts(parts[::-1]), merged)
    with pytest.raises(ProbeMismatchError, match="computed 0 times"):
        merge_probe_parts(parts[:1])
    with pytest.raises(ProbeMismatchError, match="computed 2 times"):
        merge_probe_parts([*parts, parts[0]])


def test_a_sidecar_waits_for_the_table_and_then_sees_the_engines_memory(
    tmp_path: Path, config: EngineConfig
) -> None:
    with pytest.raises(TableNotReadyError):
        ExpertTable.attach(tmp_path, timeout=0.1)
    engine = ReferenceEngine(config, tmp_path)
    table = ExpertTable.attach(tmp_path)
    assert table.layout == engine.table.layout
    engine.step()
    assert torch.equal(table.counters, engine.table.counters)
    table.weights["w2"][0, 0].add_(1)  # a write through one mapping is seen through the other
    assert torch.equal(engine.table.weights["w2"][0, 0], table.weights["w2"][0, 0])


def test_a_layout_that_cannot_hold_its_experts_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold 9 experts"):
        TableLayout(rank=0, ranks=2, layers=1, experts=9, slots_per_rank=4,
                    weights=EngineConfig().weight_specs())  # fmt: skip


def test_steps_of_two_threads_of_one_engine_never_overlap(
    tmp_path: Path, config: EngineConfig
) -> None:
    # The serving loop and a probe are two threads of one engine process: flock alone let
    # both in at once, and a probe read routes the loop was rebuilding (HTTP 500).
    engine = ReferenceEngine(config, tmp_path)
    inside = threading.Event()
    release = threading.Event()
    entered: list[float] = []

    def hold() -> None:
        with engine.table.engine_step():
            inside.set()
            release.wait(5)

    def enter() -> None:
        with engine.table.engine_step():
            entered.append(time.monotonic())

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    other = threading.Thread(target=enter)
    other.start()
    time.sleep(0.3)
    assert entered == [], "a second thread stepped while the first held the step"
    released = time.monotonic()
    release.set()
    holder.join(5)
    other.join(5)
    assert len(entered) == 1 and entered[0] >= released
