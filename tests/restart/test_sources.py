"""The sidecar's ``--source vllm-stats`` on real files: the JSONL the vLLM stand-in writes
(vLLM's ``write_stats_path`` format), appended, torn mid-line, truncated and rotated as an
engine and a log rotator do.  Expected counts come from the tokens' logical picks, not from
folding the slot counts again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from eplb_core.placements import start_up_placement
from eplb_local.standin.model import StandinModel
from eplb_local.standin.routing import StepLoad, TokenRouter
from eplb_local.standin.vllm import StatsWriter
from eplb_sidecar.sources.counters import ExpertCounters
from eplb_sidecar.sources.tail import NEW_FILE, LineTail
from eplb_sidecar.sources.vllm_stats import VllmStatsSource

MODEL = StandinModel(hidden_layers=5, first_moe_layer=2, experts=8, top_k=2, ranks=2,
                     redundant=4, tokens_per_step=64)  # fmt: skip
LAYER_IDS = MODEL.moe_layer_ids  # [2, 3, 4]


class Engine:
    """The vLLM stand-in's writer at ``path``, its steps remembered: each ``line(step)`` is
    the exact bytes of that step's record, ``logical(steps)`` ``[L, E]`` their tokens."""

    def __init__(self, scratch: Path) -> None:
        # Slot p holds expert p mod E: slots 8..11 are replicas of experts 0..3, so a
        # record's physical load folds two slots into one expert for those.
        p2l = start_up_placement(len(LAYER_IDS), MODEL.slots, MODEL.experts)
        self.router = TokenRouter(MODEL, p2l)
        self.steps: list[StepLoad] = []
        source = scratch / "engine.jsonl"
        StatsWriter(source, MODEL, "example/moe", p2l).file.close()
        self.meta = source.read_bytes()
        for step in range(6):
            load = self.router.step()
            self.steps.append(load)
            writer = StatsWriter(scratch / f"step{step}.jsonl", MODEL, "example/moe", p2l)
            writer.on_step(step, load)
            writer.file.close()
        self.lines = [
            (scratch / f"step{step}.jsonl").read_bytes().split(b"\n", 1)[1] for step in range(6)
        ]

    def logical(self, *steps: int) -> np.ndarray:
        return sum((self.steps[s].logical(MODEL.experts) for s in steps), np.zeros((3, 8)))


def counted(counters: ExpertCounters) -> np.ndarray:
    """``[L, E]`` of LAYER_IDS from the counters (zeros for a layer not seen)."""
    snapshot = counters.snapshot()
    return np.stack([snapshot.get(layer, np.zeros(MODEL.experts)) for layer in LAYER_IDS])


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    (tmp_path / "made").mkdir()
    return Engine(tmp_path / "made")


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


async def test_counts_appended_records_folded_to_logical_experts(
    engine: Engine, tmp_path: Path
) -> None:
    stats = tmp_path / "expert-load.jsonl"
    stats.write_bytes(engine.meta + engine.lines[0])  # there before the sidecar: not counted
    counters = ExpertCounters()
    source = VllmStatsSource(stats, counters, LAYER_IDS, MODEL.experts)
    await source.poll()
    assert source.records == 0 and counters.snapshot() == {}

    append(stats, engine.lines[1] + engine.lines[2])
    await source.poll()
    assert source.records == 2
    assert sorted(counters.snapshot()) == LAYER_IDS  # the engine's layer ids, not 0..L-1
    np.testing.assert_array_equal(counted(counters), engine.logical(1, 2))
    # Every token of every layer counted top_k times: nothing lost or doubled by the fold.
    assert counted(counters).sum() == 2 * len(LAYER_IDS) * MODEL.tokens_per_step * MODEL.top_k


async def test_a_half_written_line_waits_for_its_end(engine: Engine, tmp_path: Path) -> None:
    stats = tmp_path / "expert-load.jsonl"
    counters = ExpertCounters()
    source = VllmStatsSource(stats, counters, LAYER_IDS, MODEL.experts)  # no file yet
    await source.poll()
    line = engine.lines[0]
    append(stats, engine.meta + line[: len(line) // 2])  # the engine is mid-write
    await source.poll()
    assert (source.records, source.skipped) == (0, 0)
    append(stats, line[len(line) // 2 :] + engine.lines[1][:10])
    await source.poll()
    assert (source.records, source.skipped) == (1, 0)
    np.testing.assert_array_equal(counted(counters), engine.logical(0))


async def test_truncated_file_is_read_again_from_its_start(engine: Engine, tmp_path: Path) -> None:
    stats = tmp_path / "expert-load.jsonl"
    counters = ExpertCounters()
    source = VllmStatsSource(stats, counters, LAYER_IDS, MODEL.experts)
    append(stats, engine.meta + engine.lines[0] + engine.lines[1])
    await source.poll()
    # A restarted engine truncates the file (open "w") and writes its meta again, then a
    # record: shorter than what was read, so it is read from the start.
    stats.write_bytes(engine.meta + engine.lines[2])
    await source.poll()
    assert (source.records, source.skipped) == (3, 0)
    np.testing.assert_array_equal(counted(counters), engine.logical(0, 1, 2))


async def test_rotated_file_is_finished_then_the_new_one_read(
    engine: Engine, tmp_path: Path
) -> None:
    stats = tmp_path / "expert-load.jsonl"
    counters = ExpertCounters()
    source = VllmStatsSource(stats, counters, LAYER_IDS, MODEL.experts)
    append(stats, engine.meta + engine.lines[0])
    await source.poll()
    append(stats, engine.lines[1])  # written before the rotation, not yet read
    os.rename(stats, tmp_path / "expert-load.jsonl.1")
    await source.poll()  # rotated away, the engine has not re-created it yet
    assert source.records == 2
    stats.write_bytes(engine.meta + engine.lines[2] + engine.lines[3])
    await source.poll()
    assert (source.records, source.skipped) == (4, 0)
    np.testing.assert_array_equal(counted(counters), engine.logical(0, 1, 2, 3))


async def test_bad_lines_are_skipped_and_the_rest_counted(engine: Engine, tmp_path: Path) -> None:
    stats = tmp_path / "expert-load.jsonl"
    counters = ExpertCounters()
    source = VllmStatsSource(stats, counters, LAYER_IDS, MODEL.experts)
    record = json.loads(engine.lines[1])
    record["expert_load"] = record["expert_load"][:2]  # 2 layers, the map 3: refused whole
    append(stats, engine.meta + b'{"record_type": "eplb_load_stats", "expert_lo\n'
           + json.dumps(record).encode() + b"\n" + engine.lines[2])  # fmt: skip
    await source.poll()
    assert (source.records, source.skipped) == (1, 2)
    np.testing.assert_array_equal(counted(counters), engine.logical(2))


async def test_records_before_a_meta_line_are_refused(engine: Engine, tmp_path: Path) -> None:
    stats = tmp_path / "expert-load.jsonl"
    counters = ExpertCounters()
    source = VllmStatsSource(stats, counters, LAYER_IDS, MODEL.experts)
    append(stats, engine.lines[0])  # vLLM writes the meta line first: this one is torn off
    await source.poll()
    assert (source.records, source.skipped, counters.snapshot()) == (0, 1, {})


def test_line_tail_marks_each_new_file(tmp_path: Path) -> None:
    path = tmp_path / "log"
    tail = LineTail(path)
    assert tail.read() == []
    path.write_bytes(b"a\nb")
    assert tail.read() == [NEW_FILE, b"a"]
    append(path, b"\n\nc\n")
    assert tail.read() == [b"b", b"c"]
    path.write_bytes(b"d\n")  # truncated and rewritten
    assert tail.read() == [NEW_FILE, b"d"]
