"""Pods of several EP ranks as processes: 2 pods x 2 local ranks, one engine process per
local rank and one sidecar per pod (``LocalGroup(ranks_per_pod=2)``, the serving chart's
flags).  A rollout whose moves go between the local ranks of a pod (device copies) and
between pods (peer transfers) is exact (DESIGN §5).  The same scenario runs on a GPU in
test_cuda.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from eplb_local.launch import LocalGroup
from eplb_sidecar.api import CommitRequest, PrepareRequest, Result, TransferGroup
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.startup import identity_placement

from .conftest import assert_slots_hold_their_experts

RANKS_PER_POD = 2
# 4 ranks x 2 slots, as many experts as slots: no replicas, so where each expert comes
# from is fixed by the placement alone (and so are the bytes each pod reports).
CONFIG = EngineConfig(
    ranks=4, layers=3, experts=8, slots_per_rank=2, hidden=16, intermediate=8,
    workload=Workload(tokens_per_step=32, step_interval=0.05),
)  # fmt: skip


def target_placement(config: EngineConfig) -> torch.Tensor:
    """``[L, P]`` from the start-up placement (slot ``p`` holds expert ``p``), pods of
    ``RANKS_PER_POD`` ranks of ``S`` slots:

    - layer 0: the two local ranks of each pod swap experts: all copies within the pod;
    - layer 1: the two pods swap experts: everything crosses pods;
    - layer 2: every rank takes its left neighbour's experts: local rank 1 from local rank 0
      of its pod, local rank 0 from the other pod.
    """
    start = identity_placement(config)
    S = config.slots_per_rank
    local_swap = torch.cat([start[0, k * S : (k + 1) * S] for k in (1, 0, 3, 2)])
    pod_swap = start[1].roll(RANKS_PER_POD * S)
    shift = start[2].roll(S)
    return torch.stack([local_swap, pod_swap, shift])


# Per layer of target_placement: (experts copied within the pod, experts from the other
# pod), the same on both pods; every slot of a pod changes in every layer.
EXPECTED_MOVES = {0: (4, 0), 1: (0, 4), 2: (2, 2)}


def roll_out_within_and_across_pods(
    config: EngineConfig, workdir: Path, devices: list[str] | None = None
) -> None:
    """Start 2 pods of 2 ranks, roll ``target_placement`` out through the sidecars, check
    what they report, every slot's weights and the probe outputs."""
    group = LocalGroup(config, workdir, devices=devices, ranks_per_pod=RANKS_PER_POD).start()
    try:
        assert [pod.rank for pod in group.pods] == [0, 1]
        tables = [[ExpertTable.attach(d) for d in pod.table_dirs] for pod in group.pods]
        # Each engine published its own rank's table under the pod's table directory.
        assert [[t.layout.rank for t in ts] for ts in tables] == [[0, 1], [2, 3]]
        assert [t.layout.device for ts in tables for t in ts] == (
            devices or [config.device] * config.ranks
        )
        expected = group.probe()

        new = target_placement(config)
        layers = {layer: new[layer].tolist() for layer in range(config.layers)}
        transfer = TransferGroup(session="pods", store=group.pods[0].store, ranks=[0, 1])

        async def rollout() -> list[Result]:
            clients = [SidecarClient(pod.control_url, group.token) for pod in group.pods]
            try:
                infos = await asyncio.gather(*(c.info() for c in clients))
                assert [(i.rank, i.ranks, i.ranks_per_pod) for i in infos] == [
                    (0, 4, RANKS_PER_POD),
                    (1, 4, RANKS_PER_POD),
                ]
                request = PrepareRequest(revision=1, layers=layers, transfer=transfer)
                prepared = await asyncio.gather(*(c.prepare(request) for c in clients))
                commit = CommitRequest(revision=1, layers=list(layers))
                committed = await asyncio.gather(*(c.commit(commit) for c in clients))
                assert all(r.outcome == "committed" for c in committed for r in c.layers)
                return list(prepared)
            finally:
                for client in clients:
                    await client.close()

        prepared = asyncio.run(rollout())
        expert_bytes = config.layout().expert_nbytes
        for pod, result in zip(group.pods, prepared, strict=True):
            reported = {
                r.layer: (r.moves, r.bytes_local, r.bytes_peer, r.bytes_checkpoint)
                for r in result.layers
            }
            assert reported == {
                layer: (local + peer, local * expert_bytes, peer * expert_bytes, 0)
                for layer, (local, peer) in EXPECTED_MOVES.items()
            }, pod.name

        for pod_tables in tables:
            for table in pod_tables:
                assert torch.equal(table.routing, new), f"rank {table.layout.rank} routes otherwise"
                assert table.revisions.tolist() == [1] * config.layers
                assert_slots_hold_their_experts(table, config.seed)
        assert torch.equal(group.probe(), expected), "the model's outputs changed"
    finally:
        group.stop()


def test_pods_of_two_ranks_move_experts_by_local_copies_and_between_pods(tmp_path: Path) -> None:
    roll_out_within_and_across_pods(CONFIG, tmp_path)


def test_ranks_per_pod_must_divide_the_ranks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not divide"):
        LocalGroup(CONFIG, tmp_path, ranks_per_pod=3)
    pods = LocalGroup(CONFIG, tmp_path, ranks_per_pod=4).pods  # nothing started
    assert [list(pod.ranks) for pod in pods] == [[0, 1, 2, 3]]
    assert pods[0].table_dirs == [pods[0].table_dir / f"local-{k}" for k in range(4)]
