"""On a GPU: engines keep their experts in GPU memory and share them through CUDA IPC.

Two pods on one GPU: the sidecars open the engines' tensors through their IPC handles,
receive peer experts through gloo (staged through host memory) and commit into GPU memory;
the test process opens the same handles to check every slot.  Skipped without CUDA (CI has
no GPU); run on the device machine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from eplb_sidecar.api import CommitRequest, PrepareRequest, TransferGroup
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.launch import LocalGroup

from .conftest import assert_slots_hold_their_experts

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
