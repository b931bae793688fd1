"""A commit is all-or-nothing on a pod: whatever fails part-way, the table stays byte-identical."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from eplb_local.engine.reference import ReferenceEngine
from eplb_sidecar.api import CommitRequest, PrepareRequest
from eplb_sidecar.checkpoint import CheckpointReader
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.refusals import CommitFailedError
from eplb_sidecar.shuffle import ShuffleExecutor, StagedLayer

from .conftest import assert_slots_hold_their_experts
from .test_executor import rebalanced


def table_bytes(directory: Path) -> dict[str, bytes]:
    """Every file of the expert table, as the engine would read it."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "step.lock"
    }


@pytest.fixture
def pod(
    tmp_path: Path, config: EngineConfig, checkpoint: CheckpointReader
) -> tuple[ReferenceEngine, ShuffleExecutor]:
    engine = ReferenceEngine(config, tmp_path / "table")
    table = ExpertTable.attach(tmp_path / "table")
    return engine, ShuffleExecutor(table, "pod-0", None, checkpoint)


def break_a_copy(index: int) -> Callable[[StagedLayer], None]:
    """A slot write that raises: its source no longer has the slot's shape."""

    def corrupt(staged: StagedLayer) -> None:
        target, _ = staged.copies[index]
        staged.copies[index] = (target, torch.zeros(3, dtype=target.dtype))

    return corrupt


def break_the_routing_flip(staged: StagedLayer) -> None:
    """Every slot of the layer written, then flipping its routing row raises."""
    staged.phy2log = staged.phy2log[:-1]


@pytest.mark.parametrize(
    ("broken_layer", "fault"),
    [
        (0, break_a_copy(0)),  # before any write
        (1, break_a_copy(-1)),  # layer 0 committed, layer 1 all but one slot
        (2, break_a_copy(1)),  # two layers committed, the third part-way
        (2, break_the_routing_flip),  # every weight written, the last routing row not
    ],
    ids=["first-write", "last-write-of-layer-1", "mid-layer-2", "routing-flip"],
)
def test_a_failure_in_the_middle_of_a_commit_leaves_the_table_byte_identical(
    pod: tuple[ReferenceEngine, ShuffleExecutor],
    config: EngineConfig,
    broken_layer: int,
    fault: Callable[[StagedLayer], None],
) -> None:
    engine, executor = pod
    new = rebalanced(config)
    layers = list(range(config.layers))
    executor.prepare(PrepareRequest(revision=3, layers={la: new[la].tolist() for la in layers}))
    assert all(len(executor.staged[la].copies) >= 2 for la in layers)
    before = table_bytes(engine.table.directory)
    staged = executor.staged[broken_layer]
    intact = (list(staged.copies), staged.phy2log)
    fault(staged)

    with pytest.raises(CommitFailedError) as refused:
        executor.commit(CommitRequest(revision=3, layers=layers))
    assert "rolled back" in refused.value.message
    assert table_bytes(engine.table.directory) == before
    assert [s.layers for s in executor.info().staged] == [layers]  # kept for a retry

    staged.copies, staged.phy2log = intact  # the cause goes away: the retry lands
    result = executor.commit(CommitRequest(revision=3, layers=layers))
    assert {r.outcome for r in result.layers} == {"committed"}
    assert torch.equal(engine.table.routing, new)
    assert_slots_hold_their_experts(engine.table, config.seed)
