"""Fixtures for the sidecar: a small reference model, its checkpoint, tables, executors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eplb_local.engine.verify import slot_weight_errors
from eplb_sidecar.checkpoint import CheckpointReader
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.config import EngineConfig, Workload


def small_config(**changes: object) -> EngineConfig:
    base = EngineConfig(
        ranks=2, layers=3, experts=8, slots_per_rank=5, hidden=16, intermediate=8,
        workload=Workload(tokens_per_step=64, step_interval=0.0),
    )  # fmt: skip
    return base.model_copy(update=changes)


@pytest.fixture
def config() -> EngineConfig:
    return small_config()


@pytest.fixture
def checkpoint(tmp_path: Path, config: EngineConfig) -> CheckpointReader:
    write_checkpoint(tmp_path / "checkpoint", config)
    return CheckpointReader(tmp_path / "checkpoint", config.weight_specs())


def assert_slots_hold_their_experts(table: ExpertTable, seed: int) -> None:
    """DESIGN §5: every local slot's weights are exactly its logical expert's."""
    errors = slot_weight_errors(table, seed)
    assert not errors, errors[:5]


def snapshot(table: ExpertTable) -> dict[str, torch.Tensor]:
    """Everything the engine reads, copied."""
    state = {
        "routing": table.routing.clone(),
        "revisions": table.revisions.clone(),
        "counter_base": table.counter_base.clone(),
    }
    state.update({f"weights.{k}": v.clone() for k, v in table.weights.items()})
    return state


def assert_unchanged(table: ExpertTable, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(table)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"
