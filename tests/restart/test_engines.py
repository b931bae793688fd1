"""The vLLM and TensorRT-LLM halves of a Restart rollout, without a cluster: the operator
renders the start-up file of a revision (:func:`restart_files.startup_file`), the engine's
stand-in starts from it and serves tokens through it, writes load in its engine's format,
the sidecar's source reads that back, and the operator's window ``[L, E]`` is exactly the
tokens' logical picks.  (The rollout itself is engine-agnostic: test_sglang rolls it.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from eplb_local.standin import trtllm as trtllm_standin
from eplb_local.standin import vllm as vllm_standin
from eplb_local.standin.model import StandinModel
from eplb_local.standin.routing import TokenRouter
from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.loads import Sample
from eplb_operator.controller.restart_files import FILE_KEYS, startup_file, startup_revision
from eplb_operator.controller.restart_loads import engine_window
from eplb_operator.placement import rebalance
from eplb_operator.placement.views import balancedness
from eplb_sidecar.sources.counters import ExpertCounters
from eplb_sidecar.sources.trtllm import TrtllmSource
from eplb_sidecar.sources.vllm_stats import VllmStatsSource

from .conftest import EXPERTS, LAYER_IDS, RANKS, REDUNDANT, restart_spec

MODEL = StandinModel(hidden_layers=6, first_moe_layer=2, experts=EXPERTS, top_k=2, ranks=RANKS,
                     redundant=REDUNDANT, tokens_per_step=128, skew=1.4)  # fmt: skip


def measured_load() -> torch.Tensor:
    """``[L, E]`` tokens of 20 steps of the stand-ins' skewed stream."""
    start = startup_revision(spec("sglang"))[0].numpy()
    router = TokenRouter(MODEL, start)
    return torch.tensor(sum(router.step().logical(EXPERTS) for _ in range(20)), dtype=torch.float64)


def spec(engine: str) -> ExpertPlacementSpec:
    return ExpertPlacementSpec.model_validate(restart_spec(engine, "StatefulSet"))


def window(counters: ExpertCounters, pod: str = "moe-0-0") -> torch.Tensor:
    """What the operator's window makes of one pod's exported counters."""
    samples = [Sample(pod, layer, expert, float(value))
               for layer, row in counters.snapshot().items()
               for expert, value in enumerate(row)]  # fmt: skip
    return engine_window(samples, {"0": [pod]}, LAYER_IDS, EXPERTS)


async def test_vllm_plans_from_the_rendered_stats_and_its_stats_come_back(tmp_path: Path) -> None:
    load = measured_load()
    vllm = spec("vllm")
    start = startup_revision(vllm)[0]
    read_stats = tmp_path / FILE_KEYS["vllm"]
    read_stats.write_text(startup_file(vllm, rebalance(load, vllm.placement_topology()), load))

    # vLLM plans its own placement from read_stats_path: it balances the measured load.
    placement = vllm_standin.startup_placement({"read_stats_path": str(read_stats)}, MODEL)
    assert placement.shape == (len(LAYER_IDS), EXPERTS + REDUNDANT)
    before = balancedness(load, start, RANKS).mean()
    after = balancedness(load, torch.from_numpy(placement), RANKS).mean()
    assert after > before + 0.05, (float(before), float(after))

    # EP rank 0 writes write_stats_path; the sidecar (started first) counts what it appends.
    write_stats = tmp_path / "stats" / "expert-load.jsonl"
    counters = ExpertCounters()
    source = VllmStatsSource(write_stats, counters, LAYER_IDS, EXPERTS)
    writer = vllm_standin.StatsWriter(write_stats, MODEL, "example/moe", placement)
    router = TokenRouter(MODEL, placement)
    steps = [router.step() for _ in range(5)]
    for step, tokens in enumerate(steps):
        writer.on_step(step, tokens)
    await source.poll()
    assert source.records == 5
    expected = sum(tokens.logical(EXPERTS) for tokens in steps)
    np.testing.assert_array_equal(window(counters).numpy(), expected)


@pytest.mark.parametrize("one_pod", [True, False], ids=["one-pod", "pod-a-rank"])
async def test_trtllm_starts_from_the_rendered_balancer_and_its_statistics_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_pod: bool
) -> None:
    load = measured_load()
    trtllm = spec("trtllm")
    planned = rebalance(load, trtllm.placement_topology())
    balancer = tmp_path / FILE_KEYS["trtllm"]
    balancer.write_text(startup_file(trtllm, planned, load))
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump({"moe_config": {"load_balancer": str(balancer)}}))

    # trtllm-serve --extra_llm_api_options: the slots hold what the operator planned.
    document = trtllm_standin.load_balancer(str(options))
    assert document is not None and document.layer_ids == LAYER_IDS
    placement = trtllm_standin.placement_of(document, MODEL)
    np.testing.assert_array_equal(placement, planned.numpy())

    # EXPERT_STATISTIC_ITER_RANGE=2-6: per-slot counts (its balancer is on) of each rank's
    # own tokens, written at iteration 6.  In one pod every rank writes into one directory;
    # with a pod a rank, rank 1's directory has no meta_info.json (rank 0 writes it).
    statistics = tmp_path / "statistics"
    monkeypatch.setenv("EXPERT_STATISTIC_PATH", str(statistics))
    ranks = range(RANKS) if one_pod else [1]
    counters = ExpertCounters()
    source = TrtllmSource(statistics, counters, LAYER_IDS, EXPERTS, balancer)
    writers = [trtllm_standin.ExpertStatistic(MODEL, rank, True, "2-6") for rank in ranks]
    router = TokenRouter(MODEL, placement)
    steps = [router.step() for _ in range(8)]
    for iteration, tokens in enumerate(steps):
        for writer in writers:
            writer.on_step(iteration, tokens)
    await source.poll()
    assert source.dumps == 0  # a file is read once it has stayed the same for a poll
    await source.poll()
    assert source.dumps == len(ranks)
    expected = sum(
        steps[i].logical(EXPERTS, slice(rank, None, RANKS)) for i in range(2, 6) for rank in ranks
    )
    np.testing.assert_array_equal(window(counters).numpy(), expected)
    assert (statistics / "meta_info.json").exists() == one_pod
