"""What a report is drawn from: rank loads over time and the rollouts that changed them.

Two producers fill a :class:`Recording`: ``eplb demo`` (from the engines' own counters,
as it runs) and :mod:`.prometheus_source` (from a Prometheus and the ExpertPlacement's
revisions and Events on a real cluster).  :mod:`.render` draws it.  The functions here are
pure: windows and imbalance from samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from eplb_core.errors import InvalidInputError

SCHEMA: Literal["eplb.io/recording-v1"] = "eplb.io/recording-v1"
RECORDING_NAME = "recording.json"


class LoadSample(BaseModel):
    """Tokens per rank and layer served in the ``seconds`` before ``time``."""

    model_config = ConfigDict(extra="forbid")

    time: float = Field(description="Unix time at the end of the interval.")
    seconds: float = Field(gt=0, description="Length of the interval.")
    rank_load: list[list[float]] = Field(description="[layers][ranks] tokens.")


class RolloutRecord(BaseModel):
    """One rollout of a revision, as the operator reported it."""

    model_config = ConfigDict(extra="forbid")

    revision: str
    result: Literal["completed", "aborted", "in-progress"] = "in-progress"
    reason: str | None = Field(default=None, description="Why it aborted (CamelCase).")
    started: float | None = Field(default=None, description="Unix time.")
    finished: float | None = Field(default=None, description="Unix time.")
    moves: int = Field(default=0, ge=0, description="Expert slots whose weights changed.")
    layers: int = Field(default=0, ge=0, description="Layers committed.")
    batches: int = Field(default=0, ge=0, description="Barrier rounds (prepare + commit).")
    prepare_seconds: float = Field(default=0.0, ge=0, description="Summed over batches.")
    commit_seconds: float = Field(default=0.0, ge=0, description="Summed over batches.")

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return max(0.0, self.finished - self.started)


class Recording(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["eplb.io/recording-v1"] = Field(default=SCHEMA, alias="schema")
    title: str
    layers: int = Field(ge=1)
    ranks: int = Field(ge=1)
    samples: list[LoadSample] = Field(default_factory=list)
    rollouts: list[RolloutRecord] = Field(default_factory=list)

    def save(self, directory: Path) -> Path:
        """Write atomically, so a reader of a running demo never sees half a file."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / RECORDING_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(by_alias=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> Recording:
        """From a recording file, or a directory holding one (a demo's work directory)."""
        if path.is_dir():
            path = path / RECORDING_NAME
        try:
            recording = cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError as error:
            raise InvalidInputError(f"{path}: no recording (is it a demo's directory?)") from error
        except (ValueError, TypeError) as error:
            raise InvalidInputError(f"{path}: not a recording: {error}") from error
        for sample in recording.samples:
            shape = (len(sample.rank_load), {len(row) for row in sample.rank_load})
            if shape != (recording.layers, {recording.ranks}):
                raise InvalidInputError(
                    f"{path}: a sample at {sample.time} is not "
                    f"[{recording.layers}][{recording.ranks}]"
                )
        return recording

    # -- windows ---------------------------------------------------------------------------
    def window(self, start: float, end: float) -> torch.Tensor | None:
        """``[L, R]`` float64: tokens per rank and layer of the samples ending in (start, end]."""
        chosen = [s.rank_load for s in self.samples if start < s.time <= end]
        if not chosen:
            return None
        return torch.tensor(chosen, dtype=torch.float64).sum(dim=0)

    def before_and_after(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rank loads ``[L, R]`` before the first completed rollout and after the last one."""
        done = [r for r in self.rollouts if r.result == "completed" and r.finished is not None]
        if not done or not self.samples:
            return None
        first_start = done[0].started or done[0].finished
        assert first_start is not None and done[-1].finished is not None
        before = self.window(self.samples[0].time - 1, first_start)
        after = self.window(done[-1].finished, self.samples[-1].time)
        if before is None or after is None:
            return None
        return before, after
