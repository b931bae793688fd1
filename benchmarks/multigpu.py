"""Peer-to-peer expert transfers over NCCL between GPUs, through the real sidecars.

    python benchmarks/multigpu.py          # on a machine with 2+ GPUs

One reference engine and one sidecar per GPU (engine weights shared with the sidecar by
CUDA IPC; sidecars exchange experts with NCCL), each rank holding DeepSeek-V3-sized layers
(9 bf16 slots, hidden 7168, intermediate 2048).
1. One layer where half the slots receive experts from the other GPU, prepared and
   committed over HTTP (engines idle meanwhile): the sidecars' peer exchange bandwidth
   against a plain NCCL send/recv of the same bytes between the same GPUs in the same run,
   and time per layer.
2. A 58-layer rollout in batches through the operator's rollout code: total time and the
   largest per-batch stall.
3. Afterwards every slot of every GPU is compared with its expert's weights, and the
   engines' probe outputs with those before the rollout.
Results go to benchmarks/results/multigpu.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import machine, table
from eplb_local.launch import LocalGroup
from eplb_local.world.endpoints import local_endpoints
from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.controller.rollout import Rollout, RolloutOptions
from eplb_sidecar.api import CommitRequest, PrepareRequest, TransferGroup
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.startup import identity_placement
from eplb_sidecar.engine.weights import expert_weights

RESULTS = Path(__file__).resolve().parent / "results" / "multigpu.md"
SLOTS, EXPERTS = 9, 16  # two ranks: 18 slots, 2 redundant


def swapped(base: torch.Tensor, layer: int, count: int, ranks: int) -> torch.Tensor:
    """``[P]``: ``count`` slots of each rank take experts held only by the next rank."""
    row = base.clone()
    for rank in range(ranks):
        peer = (rank + 1) % ranks
        for index in range(count):
            mine = rank * SLOTS + (index + layer) % (SLOTS - 1)
            theirs = peer * SLOTS + (index + layer) % (SLOTS - 1)
            row[mine] = base[theirs]
    return row


def _plain_nccl(rank: int, world: int, nbytes: int, reps: int, port: int, out: Path) -> None:
    """Baseline: NCCL send/recv of ``nbytes`` each way between GPU pairs, median seconds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    send = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    recv = torch.empty_like(send)
    peer = (rank + 1) % world
    samples = []
    for _ in range(reps + 3):
        dist.barrier()
        torch.cuda.synchronize()
        started = time.perf_counter()
        ops = [dist.P2POp(dist.isend, send, peer), dist.P2POp(dist.irecv, recv, (rank - 1) % world)]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
    if rank == 0:
        out.write_text(str(statistics.median(samples[3:])))
    dist.destroy_process_group()


def plain_nccl_seconds(world: int, nbytes: int, reps: int) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        out = Path(workdir) / "seconds"
        port = 29000 + os.getpid() % 1000
        mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
            _plain_nccl, args=(world, nbytes, reps, port, out), nprocs=world, join=True
        )
        return float(out.read_text())


def check_every_slot(group: LocalGroup, config: EngineConfig, target: torch.Tensor) -> int:
    checked = 0
    for pod in group.pods:
        view = ExpertTable.attach(pod.table_dir)
        assert torch.equal(view.routing, target), f"{pod.name} serves another placement"
        local = view.local_placement()
        for layer in range(config.layers):
            for slot in range(SLOTS):
                want = expert_weights(view.layout.weights, config.seed, layer,
                                      int(local[layer, slot]), view.layout.device)  # fmt: skip
                for name, value in want.items():
                    assert torch.equal(view.weights[name][layer, slot], value), (
                        f"{pod.name} layer {layer} slot {slot} holds the wrong expert"
                    )
                checked += 1
    return checked


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, default=min(torch.cuda.device_count(), 8))
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--layers-per-step", type=int, default=4)
    parser.add_argument("--swap", type=int, default=4, help="slots per rank that move")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.gpus < 2:
        raise SystemExit("needs 2 or more GPUs")
    ranks = args.gpus
    config = EngineConfig(
        ranks=ranks, layers=args.layers, experts=EXPERTS * ranks // 2, slots_per_rank=SLOTS,
        hidden=7168, intermediate=2048, dtype="bfloat16", device="cuda",
        workload=Workload(tokens_per_step=32, step_interval=0.05),
    )  # fmt: skip
    base = identity_placement(config)
    devices = [f"cuda:{rank}" for rank in range(ranks)]
    with tempfile.TemporaryDirectory(dir="/dev/shm") as workdir:
        group = LocalGroup(config, Path(workdir), devices=devices, backend="nccl")
        with group:
            expected = group.probe(tokens=8)
            expert_bytes = ExpertTable.attach(group.pods[0].table_dir).layout.expert_nbytes

            def connect() -> list[SidecarClient]:  # one set per event loop
                return [SidecarClient(pod.control_url, group.token, timeout=120)
                        for pod in group.pods]  # fmt: skip

            transfer = TransferGroup(session="bench", store=group.pods[0].store,
                                     ranks=list(range(ranks)))  # fmt: skip

            async def one_layer() -> list[tuple[float, float, float, int, float]]:
                clients = connect()
                rows = []
                for rep in range(args.reps + 2):  # forth and back on layer 0
                    target = swapped(base[0], 0, args.swap, ranks) if rep % 2 == 0 else base[0]
                    revision = rep + 1
                    request = PrepareRequest(revision=revision, layers={0: target.tolist()},
                                             transfer=transfer, timeout_seconds=120)  # fmt: skip
                    started = time.perf_counter()
                    prepared = await asyncio.gather(*(c.prepare(request) for c in clients))
                    middle = time.perf_counter()
                    committed = await asyncio.gather(
                        *(c.commit(CommitRequest(revision=revision, layers=[0])) for c in clients)
                    )
                    done = time.perf_counter()
                    peer = sum(r.layers[0].bytes_peer for r in prepared)
                    exchange = max(r.transfer_seconds for r in prepared)
                    stall = max(r.stall_seconds for r in committed)
                    rows.append((middle - started, done - middle, exchange, peer, stall))
                for client in clients:
                    await client.close()
                return rows[2:]  # the first round builds the NCCL communicator

            # The transfer is compared with a plain NCCL run on idle GPUs, so the engines
            # pause serving meanwhile (a step every 5 s); they serve again for the rollout.
            group.set_workload(step_interval=5.0)
            time.sleep(1.0)
            rounds = asyncio.run(one_layer())
            group.set_workload(step_interval=config.workload.step_interval)
            prepare_s = statistics.median(r[0] for r in rounds)
            commit_s = statistics.median(r[1] for r in rounds)
            exchange_s = statistics.median(r[2] for r in rounds)
            stall_s = statistics.median(r[4] for r in rounds)
            per_rank_bytes = rounds[0][3] // ranks
            targets = torch.stack([swapped(base[layer], layer, args.swap, ranks)
                                   for layer in range(config.layers)])  # fmt: skip

            async def alive(pod: PodEndpoint) -> bool:
                return True

            async def rollout() -> tuple[float, list[float], list[float], int]:
                clients = connect()
                by_name = {pod.name: c for pod, c in zip(group.pods, clients, strict=True)}
                run = Rollout(
                    local_endpoints(group), by_name, args.reps + 10, targets,
                    RolloutOptions(layers_per_step=args.layers_per_step, barrier_timeout=120,
                                   progress_deadline=1800),
                    pod_alive=alive,
                )  # fmt: skip
                started = time.perf_counter()
                report = await run.run()
                total = time.perf_counter() - started
                for client in clients:
                    await client.close()
                batches = [b.prepare_seconds + b.commit_seconds for b in report.batches]
                commits = [b.commit_seconds for b in report.batches]
                return total, batches, commits, report.layers_committed

            total, batches, commits, layers_done = asyncio.run(rollout())
            checked = check_every_slot(group, config, targets)
            identical = torch.equal(group.probe(tokens=8), expected)
    plain_s = plain_nccl_seconds(ranks, per_rank_bytes, args.reps)
    gbps = per_rank_bytes / exchange_s / 1e9
    plain_gbps = per_rank_bytes / plain_s / 1e9
    command = "python benchmarks/multigpu.py " + shlex.join(sys.argv[1:])
    report = (
        "# Multi-GPU expert transfers (NCCL)\n\n"
        f"Command: `{command.strip()}`  \nMachine: {machine()}, {ranks} GPUs\n\n"
        f"Each GPU: one reference engine (weights in GPU memory, shared by CUDA IPC) and one "
        f"sidecar; {config.layers} DeepSeek-V3-sized layers of {SLOTS} bf16 slots "
        f"(H 7168, I 2048, {expert_bytes / 2**20:.0f} MiB per expert).\n\n"
        f"## One layer, {args.swap} of {SLOTS} slots per GPU from the other GPU "
        f"({per_rank_bytes / 2**20:.0f} MiB into each GPU), median of {args.reps} rounds\n\n"
        + table(
            ["", "seconds", "GB/s per GPU", "vs plain NCCL"],
            [
                [
                    "plain NCCL send/recv, same bytes",
                    f"{plain_s * 1e3:.2f} ms",
                    f"{plain_gbps:.0f}",
                    "100%",
                ],
                [
                    "sidecars' peer exchange (in prepare)",
                    f"{exchange_s * 1e3:.2f} ms",
                    f"{gbps:.0f}",
                    f"**{plain_s / exchange_s:.1%}**",
                ],
                [
                    "whole prepare over HTTP (plan, fingerprints, exchange)",
                    f"{prepare_s * 1e3:.2f} ms",
                    "",
                    "",
                ],
                [
                    "commit call (waits for the engine's step boundary)",
                    f"{commit_s * 1e3:.2f} ms",
                    "",
                    "",
                ],
                [
                    "engine stall in the commit (staged experts into slots, routing flip)",
                    f"{stall_s * 1e3:.2f} ms",
                    f"{per_rank_bytes / stall_s / 1e9:.0f}",
                    "",
                ],
            ],
        )
        + f"\n\n## {layers_done}-layer rollout, {args.layers_per_step} layers per barrier\n\n"
        + table(
            ["total s", "batches", "largest batch s", "largest commit call s"],
            [[f"{total:.2f}", str(len(batches)), f"{max(batches):.3f}", f"{max(commits):.4f}"]],
        )
        + f"\n\nInvariants afterwards: {checked} slots compared with their experts' weights, "
        f"all exact; probe outputs {'bit-identical' if identical else 'DIFFERENT'} to those "
        "before the rollout.\n"
    )
    assert identical, "the model's outputs changed"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
