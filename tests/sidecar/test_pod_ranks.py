"""One sidecar for a pod of several EP ranks, in process: one table per local rank, moves
between local ranks as local copies, prepare/commit atomic over all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eplb_local.engine.reference import ReferenceEngine
from eplb_sidecar.api import CommitRequest, PrepareRequest
from eplb_sidecar.contract.pod import LayoutMismatchError, PodTables, local_table_dirs
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.probe import ProbeRequest, merge_probe_parts
from eplb_sidecar.engine.startup import identity_placement
from eplb_sidecar.exporter import SidecarMetrics
from eplb_sidecar.refusals import EngineBusyError
from eplb_sidecar.shuffle import ShuffleExecutor

from .conftest import assert_slots_hold_their_experts, assert_unchanged, small_config, snapshot

RANKS_PER_POD = 4


@pytest.fixture
def pod_config() -> EngineConfig:
    return small_config(ranks=RANKS_PER_POD, experts=8, slots_per_rank=3)


@pytest.fixture
def engines(tmp_path: Path, pod_config: EngineConfig) -> list[ReferenceEngine]:
    """The pod's engine processes, one per local rank, each publishing in local-k."""
    dirs = local_table_dirs(tmp_path / "eplb", RANKS_PER_POD)
    return [
        ReferenceEngine(pod_config.model_copy(update={"rank": k}), dirs[k])
        for k in range(RANKS_PER_POD)
    ]


def probe(engines: list[ReferenceEngine]) -> torch.Tensor:
    return merge_probe_parts([engine.probe(ProbeRequest(tokens=12)) for engine in engines])


def rotated(config: EngineConfig) -> torch.Tensor:
    """``[L, P]``: the start-up placement shifted by one rank per layer, so every expert
    moves to another local rank (none stays where it was)."""
    start = identity_placement(config)
    S = config.slots_per_rank
    return torch.stack([start[layer].roll((layer + 1) * S) for layer in range(config.layers)])


def test_one_executor_moves_experts_between_local_ranks_by_copies(
    tmp_path: Path, pod_config: EngineConfig, engines: list[ReferenceEngine]
) -> None:
    for engine in engines:
        engine.step()
    before = probe(engines)
    tables = PodTables.attach(tmp_path / "eplb", RANKS_PER_POD)
    # No peers and no checkpoint: every expert the new placement puts on a rank is on
    # another rank of this pod, and must come from there.
    executor = ShuffleExecutor(tables, "pod-0", peers=None, checkpoint=None)
    info = executor.info()
    assert (info.rank, info.ranks, info.ranks_per_pod, info.slots_per_rank) == (0, 4, 4, 3)

    target = rotated(pod_config)
    layers = {layer: target[layer].tolist() for layer in range(pod_config.layers)}
    prepared = executor.prepare(PrepareRequest(revision=1, layers=layers))
    assert all(r.bytes_peer == 0 and r.bytes_checkpoint == 0 for r in prepared.layers)
    assert all(r.moves == RANKS_PER_POD * pod_config.slots_per_rank for r in prepared.layers)
    executor.commit(CommitRequest(revision=1, layers=list(layers)))

    for k in range(RANKS_PER_POD):
        table = ExpertTable.attach(local_table_dirs(tmp_path / "eplb", RANKS_PER_POD)[k])
        assert torch.equal(table.routing, target), f"local rank {k} routes otherwise"
        assert table.revisions.tolist() == [1] * pod_config.layers
        assert_slots_hold_their_experts(table, pod_config.seed)
    for engine in engines:
        engine.step()  # the engines pick the commit up at their step boundary
    assert torch.equal(probe(engines), before), "the model's outputs changed"

    # /metrics: every local rank's slots, at their global slot numbers.
    text = generate_latest(SidecarMetrics(tables).registry).decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "eplb_expert_tokens")
    slots = {int(s.labels["slot"]) for s in family.samples if s.name.endswith("_total")}
    assert slots == set(range(RANKS_PER_POD * pod_config.slots_per_rank))


def test_commit_is_atomic_over_the_local_ranks(
    tmp_path: Path, pod_config: EngineConfig, engines: list[ReferenceEngine]
) -> None:
    tables = PodTables.attach(tmp_path / "eplb", RANKS_PER_POD)
    executor = ShuffleExecutor(tables, "pod-0")
    target = rotated(pod_config)
    executor.prepare(PrepareRequest(revision=1, layers={0: target[0].tolist()}))
    states = [snapshot(table) for table in tables.tables]
    busy = engines[2].table.engine_step()  # local rank 2 is stuck in a step
    busy.__enter__()
    try:
        with pytest.raises(EngineBusyError):
            executor.commit(CommitRequest(revision=1, layers=[0], timeout_seconds=0.3))
    finally:
        busy.__exit__(None, None, None)
    for table, state in zip(tables.tables, states, strict=True):
        assert_unchanged(table, state)  # no local rank flipped alone
    executor.commit(CommitRequest(revision=1, layers=[0]))
    assert all(torch.equal(t.routing[0], target[0]) for t in tables.tables)


def test_local_tables_must_be_one_block_of_ranks(tmp_path: Path, pod_config: EngineConfig) -> None:
    for k, rank in enumerate((0, 2)):  # local-1 claims rank 2: not consecutive
        ReferenceEngine(pod_config.model_copy(update={"rank": rank}), tmp_path / f"local-{k}")
    with pytest.raises(LayoutMismatchError, match="consecutive ranks"):
        PodTables.attach(tmp_path, 2)
