"""On a GPU: engines keep their experts in GPU memory and share them through CUDA IPC.

Two pods on one GPU: the sidecars open the engines' tensors through their IPC handles,
receive peer experts through gloo (staged through host memory) and commit into GPU memory;
the test process opens the same handles to check every slot.  Then pods of two ranks (two
engine processes each): moves between the local ranks of a pod are device copies between
the engines' IPC-mapped tensors.  Skipped without CUDA (CI has no GPU); run on the device
machine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from eplb_local.launch import LocalGroup
from eplb_sidecar.api import CommitRequest, PrepareRequest, TransferGroup
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.config import EngineConfig, Workload

from .conftest import assert_slots_hold_their_experts
from .test_multi_rank_pods import CONFIG as POD_CONFIG
from .test_multi_rank_pods import roll_out_within_and_across_pods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIG = EngineConfig(
    ranks=2, layers=2, experts=6, slots_per_rank=4, hidden=64, intermediate=32,
    dtype="bfloat16", device="cuda", workload=Workload(tokens_per_step=64, step_interval=0.01),
)  # fmt: skip


def test_a_rollout_between_gpu_engines_is_exact(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "checkpoint", CONFIG)
    group = LocalGroup(CONFIG, tmp_path, checkpoint=tmp_path / "checkpoint").start()
    try:
        expected = group.probe()
        views = [ExpertTable.attach(pod.table_dir) for pod in group.pods]
        assert all(v.weights["w13"].is_cuda for v in views)
        # Every expert moves to the other rank: all slots change, all come from the peer.
        old = views[0].routing.clone()
        new = torch.cat([old[:, 4:], old[:, :4]], dim=1)
        layers = {layer: new[layer].tolist() for layer in range(CONFIG.layers)}
        transfer = TransferGroup(session="gpu", store=group.pods[0].store, ranks=[0, 1])

        async def rollout() -> list[int]:
            clients = [SidecarClient(pod.control_url, group.token) for pod in group.pods]
            request = PrepareRequest(revision=1, layers=layers, transfer=transfer)
            prepared = await asyncio.gather(*(c.prepare(request) for c in clients))
            await asyncio.gather(
                *(c.commit(CommitRequest(revision=1, layers=list(layers))) for c in clients)
            )
            for client in clients:
                await client.close()
            return [sum(layer.bytes_peer for layer in r.layers) for r in prepared]

        peer_bytes = asyncio.run(rollout())
        assert all(b > 0 for b in peer_bytes)
        for view in views:
            assert torch.equal(view.routing, new)
            assert_slots_hold_their_experts(view, CONFIG.seed)
        assert torch.equal(group.probe(), expected)
    finally:
        group.stop()


def test_pods_of_two_gpu_ranks_move_experts_by_device_copies_and_between_pods(
    tmp_path: Path,
) -> None:
    """test_multi_rank_pods's rollout with GPU engines, rank ``r`` on ``cuda:(r mod GPUs)``:
    all on cuda:0 with one GPU; with two, local rank ``k`` on ``cuda:k`` as in a real pod
    (copies within a pod go between GPUs; experts from the other pod arrive over gloo in
    host memory, are staged on the pod's first GPU and copied to the second at commit);
    with four, a GPU per rank."""
    config = POD_CONFIG.model_copy(
        update={"dtype": "bfloat16", "device": "cuda", "hidden": 64, "intermediate": 32}
    )
    gpus = torch.cuda.device_count()
    devices = [f"cuda:{rank % gpus}" for rank in range(config.ranks)]
    roll_out_within_and_across_pods(config, tmp_path, devices)
