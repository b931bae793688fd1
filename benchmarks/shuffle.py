"""Weight shuffles: bytes moved and time per layer on CPU pods; local shuffle bandwidth on a GPU.

    python benchmarks/shuffle.py                 # CPU part, and the GPU part where CUDA is
    python benchmarks/shuffle.py --gpu-only      # on the device machine

CPU: a group of local pods (reference engine + sidecar processes, gloo) rolls out a fresh
placement from the placement engine layer by layer over HTTP; per layer: moves, bytes moved
locally and from peers, prepare and commit time.  GPU: one DeepSeek-V3-sized layer (9 bf16
slots, hidden 7168, intermediate 2048) on one rank; commit of local shuffles (the engine's
stall) timed against a plain device copy of the same bytes in the same run, and against a
staged ``index_select`` permutation.  Results go to benchmarks/results/shuffle.md (the GPU
part to shuffle-gpu.md when run alone).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import machine, table
from eplb_sidecar.api import CommitRequest, PrepareRequest, TransferGroup
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.layout import TableLayout
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.startup import identity_placement
from eplb_sidecar.shuffle import ShuffleExecutor

RESULTS = Path(__file__).resolve().parent / "results"


# -- CPU: local pods ----------------------------------------------------------------------
def cpu_rollout(ranks: int, layers: int, hidden: int, intermediate: int) -> str:
    from eplb_local.launch import LocalGroup
    from eplb_operator.placement import Topology, plan
    from eplb_operator.workloads import zipf_load

    experts, slots = 8 * ranks, 9  # one redundant slot per rank
    config = EngineConfig(
        ranks=ranks, layers=layers, experts=experts, slots_per_rank=slots, hidden=hidden,
        intermediate=intermediate, dtype="bfloat16",
        workload=Workload(tokens_per_step=64, step_interval=0.05),
    )  # fmt: skip
    topology = Topology.from_redundant(experts, ranks, ranks * slots - experts, 1, 1)
    new = plan(zipf_load(layers, experts, 1.0, seed=5), topology,
               previous=identity_placement(config)).placement  # fmt: skip
    rows, totals = [], {"moves": 0, "local": 0, "peer": 0, "prepare": 0.0, "commit": 0.0}
    with tempfile.TemporaryDirectory() as workdir, LocalGroup(config, Path(workdir)) as group:
        clients = [SidecarClient(pod.control_url, group.token) for pod in group.pods]

        async def rollout_layer(layer: int) -> tuple[list[object], float, float]:
            transfer = TransferGroup(session="bench", store=group.pods[0].store,
                                     ranks=list(range(ranks)))  # fmt: skip
            request = PrepareRequest(revision=1, layers={layer: new[layer].tolist()},
                                     transfer=transfer)  # fmt: skip
            started = time.perf_counter()
            prepared = await asyncio.gather(*(c.prepare(request) for c in clients))
            middle = time.perf_counter()
            await asyncio.gather(
                *(c.commit(CommitRequest(revision=1, layers=[layer])) for c in clients)
            )
            return list(prepared), middle - started, time.perf_counter() - middle

        async def run_all() -> None:
            for layer in track(range(layers), description="CPU rollout"):
                prepared, prep_s, commit_s = await rollout_layer(layer)
                results = [r.layers[0] for r in prepared]  # type: ignore[attr-defined]
                moves = sum(r.moves for r in results)
                local = sum(r.bytes_local for r in results)
                peer = sum(r.bytes_peer for r in results)
                totals["moves"] += moves
                totals["local"] += local
                totals["peer"] += peer
                totals["prepare"] += prep_s
                totals["commit"] += commit_s
                rows.append([str(layer), str(moves), f"{local / 2**20:.1f}", f"{peer / 2**20:.1f}",
                             f"{prep_s * 1e3:.0f}", f"{commit_s * 1e3:.0f}",
                             f"{peer / 2**30 / prep_s:.2f}"])  # fmt: skip
            for client in clients:
                await client.close()

        asyncio.run(run_all())
        for pod in group.pods:  # the rollout must have been exact, or its timing means nothing
            table_view = ExpertTable.attach(pod.table_dir)
            assert torch.equal(table_view.routing, new), "pods do not serve the new placement"
    expert_mib = 3 * hidden * intermediate * 2 / 2**20
    rows.append(["all", str(totals["moves"]), f"{totals['local'] / 2**20:.1f}",
                 f"{totals['peer'] / 2**20:.1f}", f"{totals['prepare'] * 1e3:.0f}",
                 f"{totals['commit'] * 1e3:.0f}",
                 f"{totals['peer'] / 2**30 / totals['prepare']:.2f}"])  # fmt: skip
    return (
        f"### CPU: {ranks} pods, {layers} layers, {experts} experts, {slots} slots/rank, "
        f"bf16 experts of {expert_mib:.2f} MiB (H={hidden}, I={intermediate})\n\n"
        "A fresh placement from `plan()` on a Zipf(1.0) load, rolled out one layer per "
        "barrier round over HTTP: prepare on every pod (gloo transfers), then commit on every "
        "pod. Bytes are summed over pods; peer GiB/s is peer bytes over prepare time (HTTP "
        "and the gloo rendezvous included). Commit time is mostly the wait for each engine's "
        "step boundary: the engines keep serving on the same 2 cores.\n\n"
        + table(
            ["layer", "moves", "local MiB", "peer MiB", "prepare ms", "commit ms", "peer GiB/s"],
            rows,
        )
    )


# -- GPU: one rank, in process ------------------------------------------------------------
DSV3 = {"hidden": 7168, "intermediate": 2048, "slots": 9, "experts": 256, "ranks": 32}


def gpu_table(directory: Path) -> tuple[ExpertTable, ShuffleExecutor, torch.Tensor]:
    """Rank 0 of a DeepSeek-V3 group, one layer, weights on the GPU."""
    S = DSV3["slots"]
    config = EngineConfig(ranks=DSV3["ranks"], layers=1, experts=DSV3["experts"],
                          slots_per_rank=S, hidden=DSV3["hidden"],
                          intermediate=DSV3["intermediate"], dtype="bfloat16",
                          device="cuda")  # fmt: skip
    layout: TableLayout = config.layout()
    weights = {
        spec.name: torch.randn((1, S, *spec.shape), device="cuda").to(spec.torch_dtype)
        for spec in layout.weights
    }
    table = ExpertTable.create(directory, layout, identity_placement(config), weights)
    # The sidecar's own open of the step lock; the same process needs no IPC handles.
    sidecar_view = ExpertTable(directory, layout, create=False)
    sidecar_view.weights = weights
    return table, ShuffleExecutor(sidecar_view, "bench"), identity_placement(config)[0]


def time_cuda(run: object, reps: int) -> float:
    """Median seconds of ``run()`` (which synchronizes itself)."""
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def index_select_row(table: ExpertTable, reps: int) -> list[str]:
    """The staged permutation some engines use, against a memcpy of the layer's bytes."""
    S = table.layout.slots_per_rank
    perm = torch.arange(S, device="cuda").roll(1)
    layer_bytes = S * table.layout.expert_nbytes

    def index_select() -> None:
        for tensor in table.weights.values():
            tensor[0] = tensor[0].index_select(0, perm)
        torch.cuda.synchronize()

    source = torch.empty(layer_bytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)

    def memcpy() -> None:
        target.copy_(source)
        torch.cuda.synchronize()

    index_select()
    memcpy()
    staged, plain = time_cuda(index_select, reps), time_cuda(memcpy, reps)
    return ["staged index_select of all 9 slots", str(S), f"{layer_bytes / 2**20:.0f}",
            f"{plain * 1e3:.3f}", f"{staged * 1e3:.3f}", f"{plain / staged:.1%}", "-", "-",
            "-"]  # fmt: skip


def gpu_local_shuffle(reps: int) -> str:
    S = DSV3["slots"]
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        expert_table, executor, base = gpu_table(Path(directory))
        expert_bytes = expert_table.layout.expert_nbytes
        scenarios = {
            "rotate all 9 slots (one 9-cycle)": base.clone().index_copy_(
                0, torch.arange(S), base[:S].roll(1)),
            "swap 4 pairs (8 slots, four 2-cycles)": base.clone().index_copy_(
                0, torch.arange(8), base[torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])]),
            "rotate 3 slots (one 3-cycle)": base.clone().index_copy_(
                0, torch.arange(3), base[torch.tensor([1, 2, 0])]),
        }  # fmt: skip
        revision = 0
        rows = []
        for name, shuffled in track(scenarios.items(), description="GPU shuffles"):
            moved = int((shuffled != base).sum())
            commit_s, prepare_s, stall_s = [], [], []
            for rep in range(reps * 2):
                revision += 1
                row = shuffled if rep % 2 == 0 else base
                started = time.perf_counter()
                executor.prepare(PrepareRequest(revision=revision, layers={0: row.tolist()}))
                torch.cuda.synchronize()
                middle = time.perf_counter()
                executor.commit(CommitRequest(revision=revision, layers=[0]))
                prepare_s.append(middle - started)
                commit_s.append(time.perf_counter() - middle)
                stall_s.append(executor.last_stall_seconds)
            commit = statistics.median(commit_s[2:])  # first rounds warm the allocator
            prepare = statistics.median(prepare_s[2:])
            stall = statistics.median(stall_s[2:])
            source = torch.empty(moved * expert_bytes, dtype=torch.uint8, device="cuda")
            target = torch.empty_like(source)

            def memcpy(target: torch.Tensor = target, source: torch.Tensor = source) -> None:
                target.copy_(source)
                torch.cuda.synchronize()

            memcpy()
            plain = time_cuda(memcpy, reps)
            rows.append([name, str(moved), f"{moved * expert_bytes / 2**20:.0f}",
                         f"{plain * 1e3:.3f}", f"{stall * 1e3:.3f}", f"**{plain / stall:.1%}**",
                         f"{commit * 1e3:.3f}", f"{plain / commit:.1%}",
                         f"{prepare * 1e3:.3f}"])  # fmt: skip
            del source, target
        rows.append(index_select_row(expert_table, reps))
        # The table must hold the base placement's contents again: every run ended on it.
        assert torch.equal(expert_table.routing[0], base)
    header = ["shuffle", "slots moved", "MiB", "memcpy ms", "engine stall ms",
              "stall vs memcpy", "commit call ms", "call vs memcpy", "prepare ms"]  # fmt: skip
    return (
        f"### GPU: one DeepSeek-V3 layer on one rank (9 bf16 slots, H=7168, I=2048, "
        f"{expert_table.layout.expert_nbytes / 2**20:.0f} MiB per expert)\n\n"
        "memcpy: one plain device copy of the moved bytes. Engine stall: the time the commit "
        "holds the engine at its step boundary (the copies into the slots, the routing flip "
        "and a device synchronize); stall vs memcpy is memcpy time / stall time. Commit call: "
        "the whole `commit()`, lock taking and bookkeeping included. Medians of interleaved "
        "rounds (forward and back). The last row is the staged permutation "
        "`w[l] = w[l].index_select(0, perm)` of all 9 slots, for comparison. prepare saves "
        "one slot per copy cycle, off the stall path.\n\n" + table(header, rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    command = "python benchmarks/shuffle.py " + shlex.join(sys.argv[1:])
    sections = [f"Command: `{command.strip()}`  \nMachine: {machine()}"]
    if not args.gpu_only:
        sections.append(cpu_rollout(args.ranks, args.layers, args.hidden, args.intermediate))
    if torch.cuda.is_available():
        sections.append(gpu_local_shuffle(args.reps))
    else:
        sections.append(
            "### GPU\n\nNo CUDA device here: the GPU figures are in shuffle-gpu.md, from "
            "`--gpu-only` on a GPU machine."
        )
    default = RESULTS / ("shuffle-gpu.md" if args.gpu_only else "shuffle.md")
    report = "# Weight shuffles\n\n" + "\n\n".join(sections) + "\n"
    output = args.output or default
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
