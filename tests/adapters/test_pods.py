"""Hot swap under real model code: two pods (transformers engine + sidecar processes) each.

Per architecture, over real HTTP, gloo and shared memory: the group's logits are the model's
(bit-identical to one rank computing alone, close to the stock model); the counters hold
exactly the router's choices; rollouts through the sidecars' control API — with the pods
committing one after the other while the engines serve — keep every logit bit and put
every expert's exact weights in its slots.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from eplb_local.engine.verify import slot_weight_errors
from eplb_local.launch import LocalGroup
from eplb_sidecar.adapters.transformers.dispatch import assign_slots
from eplb_sidecar.adapters.transformers.engine import TransformersEngine
from eplb_sidecar.adapters.transformers.models import VOCAB, build_model
from eplb_sidecar.adapters.transformers.options import Architecture, ModelShape
from eplb_sidecar.adapters.transformers.prompts import probe_prompt, workload_batch
from eplb_sidecar.api import CommitRequest, PrepareRequest, TransferGroup
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.routing import replica_table

from .conftest import (
    ARCHITECTURES,
    DISPATCH_BLOCK,
    model_config,
    options,
    router_choices,
    single_rank,
)

pytestmark = pytest.mark.slow

# Start-up: slot p holds expert p mod 8, rank 0 [0 1 2 3 4], rank 1 [5 6 7 0 1].
# Revision 1 takes 0 and 1 off rank 0: rank 1 still has them, so while only rank 0 has
# committed the group's slots still hold every expert, and the engines serve on.
REVISION_1 = [6, 7, 2, 3, 4, 5, 0, 1, 6, 7]
# Revision 2 moves 2, 3 and 4 to rank 1: with only rank 0 committed no slot holds them, and
# the engines wait until rank 1 commits.
REVISION_2 = [5, 6, 7, 0, 1, 2, 3, 4, 2, 3]


@dataclass
class Counts:
    """Rank 0's served steps and every rank's counters ``[R, L, S]``, read at one boundary."""

    steps: int
    counters: torch.Tensor


def read_counts(group: LocalGroup, tables: list[ExpertTable]) -> Counts:
    """Hold rank 0 at its step boundary (its step lock, as a commit does): the group's
    rounds need rank 0, so every rank's counters hold exactly rank 0's steps."""
    with tables[0].engine_step():
        with urllib.request.urlopen(f"{group.pods[0].engine_url}/v1/status") as response:
            steps = int(json.load(response)["steps"])
        return Counts(steps, torch.stack([t.counters.clone() for t in tables]))


def replay_choices(
    engine: TransformersEngine, config: EngineConfig, steps: range
) -> list[list[torch.Tensor]]:
    """Per step and layer, the experts ``[T·k]`` the model's router chose for the batch
    the engines served at that step (computed again by one rank in this process)."""
    workload = config.workload
    out = []
    for step in steps:
        batch = workload_batch(workload.tokens_per_step, workload.skew, workload.shift,
                               config.seed, step, VOCAB)  # fmt: skip
        with router_choices(engine.model) as seen:
            engine.logits(batch)
        out.append([layer[0].reshape(-1) for layer in seen])
    return out


def assert_counts_match(
    config: EngineConfig,
    placement: torch.Tensor,
    counted: torch.Tensor,
    choices: list[list[torch.Tensor]],
) -> None:
    """``counted [R, L, S]`` over a window is, per logical expert, what the router chose,
    and per slot what the dispatch rule gives for ``placement [L, P]``."""
    per_slot = counted.permute(1, 0, 2).reshape(config.layers, -1)  # [L, P]
    per_expert = torch.zeros(config.layers, config.experts, dtype=torch.int64)
    per_expert.scatter_add_(1, placement, per_slot)
    routed = torch.zeros_like(per_expert)
    dispatched = torch.zeros_like(per_slot)
    for step in choices:
        for layer, experts in enumerate(step):
            routed[layer] += torch.bincount(experts, minlength=config.experts)
            log2phy, replicas = replica_table(placement[layer], config.experts)
            slots, _ = assign_slots(experts, log2phy, replicas, DISPATCH_BLOCK)
            dispatched[layer] += torch.bincount(slots, minlength=placement.shape[1])
    assert int(routed.sum()) > 0
    assert torch.equal(per_expert, routed), (per_expert, routed)
    assert torch.equal(per_slot, dispatched), (per_slot, dispatched)


async def prepare(group: LocalGroup, revision: int, row: list[int]) -> list[SidecarClient]:
    clients = [SidecarClient(pod.control_url, group.token) for pod in group.pods]
    transfer = TransferGroup(session=f"rollout-{revision}", store=group.pods[0].store,
                             ranks=list(range(len(group.pods))))  # fmt: skip
    request = PrepareRequest(revision=revision, layers=dict.fromkeys((0, 1), row),
                             transfer=transfer)  # fmt: skip
    await asyncio.gather(*(client.prepare(request) for client in clients))
    return clients


class Probe(threading.Thread):
    """``group.probe()`` in the background (it waits for the engines' next round)."""

    def __init__(self, group: LocalGroup) -> None:
        super().__init__(daemon=True)
        self.group = group
        self.logits: torch.Tensor | None = None
        self.start()

    def run(self) -> None:
        self.logits = self.group.probe()


async def roll_out_one_pod_at_a_time(
    group: LocalGroup, revision: int, row: list[int], serves_between: bool
) -> torch.Tensor:
    """Prepare everywhere, commit rank 0, probe, commit rank 1; the probe's logits."""
    clients = await prepare(group, revision, row)
    commit = CommitRequest(revision=revision, layers=[0, 1])
    await clients[0].commit(commit)
    probe = Probe(group)
    await asyncio.to_thread(probe.join, 10.0 if serves_between else 1.0)
    # With every expert held somewhere the group serves on; else it waits for rank 1.
    assert probe.is_alive() != serves_between
    await clients[1].commit(commit)
    await asyncio.to_thread(probe.join, 60)
    for client in clients:
        await client.close()
    assert probe.logits is not None
    return probe.logits


@pytest.mark.parametrize("architecture", ARCHITECTURES)
async def test_a_real_model_serves_counts_and_hot_swaps_exactly(
    architecture: Architecture, tmp_path: Path
) -> None:
    config = model_config(architecture)
    alone = single_rank(config, architecture, tmp_path / "alone")
    stock = build_model(ModelShape.of(architecture, config))
    prompt = probe_prompt(16, seed=12345, vocab=VOCAB)  # what group.probe() asks for
    with LocalGroup(config, tmp_path / "pods", transformers=options(architecture)) as group:
        tables = [ExpertTable.attach(pod.table_dir) for pod in group.pods]
        start_up = tables[0].routing.clone()

        # The group computes the model: one rank alone gets the same bits, the stock
        # model the same values (up to float32 summation order).
        expected = group.probe()
        assert torch.equal(expected, alone.logits(prompt))
        with torch.inference_mode():
            stock_logits = stock(input_ids=prompt, use_cache=False).logits[0]
        torch.testing.assert_close(expected, stock_logits, rtol=1e-5, atol=1e-5)

        # Counters since start-up: exactly the router's choices of every served batch.
        served = await asyncio.to_thread(read_counts, group, tables)
        assert served.steps > 0
        choices = replay_choices(alone, config, range(served.steps))
        assert_counts_match(config, start_up, served.counters, choices)

        # Hot swaps while serving, the pods committing one after the other.
        for revision, row, serves_between in ((1, REVISION_1, True), (2, REVISION_2, False)):
            during = await roll_out_one_pod_at_a_time(group, revision, row, serves_between)
            assert torch.equal(during, expected)
            for table in tables:
                assert table.routing.tolist() == [row, row]
                assert slot_weight_errors(table, config.seed) == []
            assert torch.equal(group.probe(), expected)

        # Counters after the swaps: the new slots get exactly their share.
        first = await asyncio.to_thread(read_counts, group, tables)
        await asyncio.sleep(1.0)
        second = await asyncio.to_thread(read_counts, group, tables)
        assert second.steps > first.steps
        choices = replay_choices(alone, config, range(first.steps, second.steps))
        new = torch.tensor([REVISION_2, REVISION_2])
        assert_counts_match(config, new, second.counters - first.counters, choices)

        # Every slot holds its expert's weights: the same tensors the stock model uses.
        blocks = [layer.mlp for layer in stock.model.layers if hasattr(layer.mlp, "experts")]
        for rank, table in enumerate(tables):
            for layer, block in enumerate(blocks):
                for slot in range(config.slots_per_rank):
                    expert = REVISION_2[rank * config.slots_per_rank + slot]
                    assert torch.equal(
                        table.weights["w13"][layer, slot], block.experts.gate_up_proj[expert]
                    )
                    assert torch.equal(
                        table.weights["w2"][layer, slot], block.experts.down_proj[expert]
                    )


def test_an_engine_that_loses_a_peer_stops_instead_of_serving_half_a_model(
    tmp_path: Path,
) -> None:
    """Like vLLM's and SGLang's EP groups, the engines' process group is fixed: when a rank
    dies the others cannot compute any step, so they exit (Kubernetes restarts them)."""
    config = model_config("mixtral")
    with LocalGroup(config, tmp_path, transformers=options("mixtral")) as group:
        survivor, lost = group.pods
        group.kill(lost, "engine")
        assert survivor.engine is not None
        assert survivor.engine.wait(60) is not None
        log = survivor.logs[0].read_text()
        assert "engine group failed; stopping" in log
