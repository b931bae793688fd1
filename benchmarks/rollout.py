"""Rollout control-plane cost: barrier rounds over many sidecars, and a full 61-layer rollout.

    python benchmarks/rollout.py          # writes benchmarks/results/rollout.md

Barrier round: prepare on every sidecar in parallel, then commit on every sidecar (a new
revision of an unchanged placement: no weights move), timed from the first request to the
last answer, for 8, 32 and 64 sidecar processes.  Full rollout: 32 pods of a DeepSeek-V3
shaped group (61 layers, 256 experts, 9 slots per rank) roll out a fresh placement from
the placement engine through the operator's own rollout code, 4 layers per barrier, with
real peer transfers (small experts, so the control plane dominates); afterwards every slot
of every pod is checked against its expert.  Goals (issue #5): < 100 ms per barrier round
at 64 sidecars; < 10 s for the full rollout.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import machine, previous_section, table
from eplb_local.launch import LocalGroup
from eplb_local.world.endpoints import local_endpoints
from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.controller.rollout import Rollout, RolloutOptions
from eplb_operator.controller.sessions import TransferSessions
from eplb_operator.placement import Topology, plan
from eplb_operator.workloads import zipf_load
from eplb_sidecar.api import CommitRequest, PrepareRequest
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.startup import identity_placement
from eplb_sidecar.engine.weights import expert_weights

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.md"
MODELLED_SIDECARS = [8, 64, 256]
START_SECONDS = 900


@dataclass(frozen=True)
class BarrierCost:
    """A no-data barrier round over ``sidecars``: wall seconds, and CPU seconds per round of
    one sidecar (its idle CPU over the same time subtracted) and of the operator's client
    per sidecar."""

    sidecars: int
    median: float
    p90: float
    worst: float
    sidecar_cpu: float
    operator_cpu_per_sidecar: float

    def modelled(self, sidecars: int) -> float:
        """Wall seconds of a round at ``sidecars``, each on cores of its own (a cluster):
        the operator's fan-out, one core's worth of work per sidecar, then the slowest
        sidecar's own work (they run side by side).  Network latency (two round trips, well
        under a millisecond in a cluster) is left out."""
        return sidecars * self.operator_cpu_per_sidecar + self.sidecar_cpu


@contextmanager
def started(config: EngineConfig) -> Iterator[LocalGroup]:
    """Sidecars of ``config`` without engines, started and stopped at the end; many
    processes starting at once on a shared 2-core machine take longer than the launcher's
    default wait."""
    with tempfile.TemporaryDirectory() as workdir:
        group = LocalGroup(config, Path(workdir), serve_engines=False)
        try:
            yield group.start(timeout=START_SECONDS)
        finally:
            group.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def barrier_rounds(sidecars: int, rounds: int) -> BarrierCost:
    """Wall time and CPU of no-data prepare+commit rounds over ``sidecars`` processes."""
    config = EngineConfig(ranks=sidecars, layers=4, experts=sidecars, slots_per_rank=2,
                          hidden=8, intermediate=8)  # fmt: skip
    rows = identity_placement(config)
    warm_up_rounds = 2  # the first rounds open connections
    with started(config) as group:
        pids = [pod.sidecar.pid for pod in group.pods if pod.sidecar is not None]

        def sidecars_cpu() -> float:
            return sum(cpu_seconds(pid) for pid in pids)

        async def run() -> tuple[list[float], float, float]:
            clients = [SidecarClient(pod.control_url, group.token) for pod in group.pods]
            samples = []
            for revision in range(1, rounds + warm_up_rounds + 1):
                if revision == warm_up_rounds + 1:
                    operator_before, sidecars_before = time.process_time(), sidecars_cpu()
                prepare = PrepareRequest(
                    revision=revision, layers={layer: rows[layer].tolist() for layer in (0, 1)}
                )
                commit = CommitRequest(revision=revision, layers=[0, 1])
                started = time.perf_counter()
                await asyncio.gather(*(c.prepare(prepare) for c in clients))
                await asyncio.gather(*(c.commit(commit) for c in clients))
                samples.append(time.perf_counter() - started)
            operator = time.process_time() - operator_before
            busy = sidecars_cpu() - sidecars_before
            # What the sidecars burn anyway (their event loops, metrics), over as long.
            idle_before, idle_started = sidecars_cpu(), time.perf_counter()
            await asyncio.sleep(sum(samples[warm_up_rounds:]))
            idle = (sidecars_cpu() - idle_before) * (
                sum(samples[warm_up_rounds:]) / (time.perf_counter() - idle_started)
            )
            for client in clients:
                await client.close()
            return samples[warm_up_rounds:], operator, max(0.0, busy - idle)

        samples, operator, sidecar = asyncio.run(run())
    ordered = sorted(samples)
    return BarrierCost(
        sidecars,
        statistics.median(ordered),
        ordered[int(0.9 * (len(ordered) - 1))],
        ordered[-1],
        sidecar / (rounds * len(pids)),
        operator / (rounds * sidecars),
    )


def full_rollout(pods: int, layers: int, layers_per_step: int) -> list[dict[str, float]]:
    """The placement's first rollout (a fresh group: it builds the transfer sessions), then
    a second one to the plan of another load, reusing the sessions as the operator does."""
    experts, slots = 256, 9
    config = EngineConfig(ranks=pods, layers=layers, experts=experts, slots_per_rank=slots,
                          hidden=32, intermediate=16)  # fmt: skip
    topology = Topology.from_redundant(experts, pods, pods * slots - experts, 4, 8)
    first = plan(zipf_load(layers, experts, 1.0, seed=11), topology,
                 previous=identity_placement(config)).placement  # fmt: skip
    target = plan(zipf_load(layers, experts, 1.0, seed=12), topology, previous=first).placement
    sessions = TransferSessions()
    with started(config) as group:
        groups = local_endpoints(group)

        async def alive(pod: PodEndpoint) -> bool:
            return True

        async def run(revision: int, placement: torch.Tensor) -> dict[str, float]:
            clients = {pod.name: SidecarClient(pod.control_url, group.token)
                       for pod in group.pods}  # fmt: skip
            rollout = Rollout(
                groups, clients, revision, placement,
                RolloutOptions(layers_per_step=layers_per_step, barrier_timeout=60,
                               progress_deadline=600),
                pod_alive=alive, sessions=sessions,
            )  # fmt: skip
            started = time.perf_counter()
            report = await rollout.run()
            total = time.perf_counter() - started
            for client in clients.values():
                await client.close()
            stalls = [b.prepare_seconds + b.commit_seconds for b in report.batches]
            return {"total": total, "largest": max(stalls), "median": statistics.median(stalls),
                    "batches": len(stalls), "moves": report.moves,
                    "sessions": sessions.started}  # fmt: skip

        rollouts = [asyncio.run(run(1, first)), asyncio.run(run(2, target))]
        for pod in track(group.pods, description="checking every slot"):
            view = ExpertTable.attach(pod.table_dir)
            assert torch.equal(view.routing, target), f"{pod.name} serves another placement"
            local = view.local_placement()
            for layer in range(layers):
                for slot in range(slots):
                    want = expert_weights(view.layout.weights, config.seed, layer,
                                          int(local[layer, slot]))  # fmt: skip
                    for name, value in want.items():
                        assert torch.equal(view.weights[name][layer, slot], value), (
                            f"{pod.name} layer {layer} slot {slot} holds the wrong expert"
                        )
    return rollouts


def full_section(args: argparse.Namespace, rollouts: list[dict[str, float]]) -> str:
    names = ("first (fresh: builds the transfer sessions)", "second (reuses them)")
    return (
        f"## Full rollout: {args.pods} pods, {args.layers} layers, 256 experts, "
        f"9 slots per rank, {args.layers_per_step} layers per barrier\n\n"
        + table(
            [
                "rollout",
                "total s",
                "batches",
                "slots moved",
                "median batch s",
                "largest batch s",
                "sessions started",
                "< 10 s",
            ],
            [
                [
                    name,
                    f"{full['total']:.2f}",
                    str(int(full["batches"])),
                    str(int(full["moves"])),
                    f"{full['median']:.3f}",
                    f"{full['largest']:.3f}",
                    str(int(full["sessions"])),
                    "yes" if full["total"] < 10 else "**no**",
                ]
                for name, full in zip(names, rollouts, strict=True)
            ],
        )
        + "\n\nEvery slot of every pod was checked against its expert's weights after the "
        "second rollout.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sidecars", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pods", type=int, default=32, help="0: no full rollout")
    parser.add_argument("--layers", type=int, default=61)
    parser.add_argument("--layers-per-step", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    costs = [
        barrier_rounds(count, args.rounds)
        for count in track(args.sidecars, description="barrier rounds")
    ]
    rows = [[str(c.sidecars), f"{c.median * 1e3:.1f}", f"{c.p90 * 1e3:.1f}",
             f"{c.worst * 1e3:.1f}", f"{c.sidecar_cpu * 1e3:.2f}",
             f"{c.operator_cpu_per_sidecar * 1e3:.2f}"] for c in costs]  # fmt: skip
    # The model from the largest run (the most samples per sidecar).
    basis = costs[-1]
    modelled = [[str(n), f"{basis.modelled(n) * 1e3:.1f}",
                 ("yes" if basis.modelled(n) < 0.1 else "**no**") if n == 64 else "–"]
                for n in MODELLED_SIDECARS]  # fmt: skip
    command = "python benchmarks/rollout.py " + shlex.join(sys.argv[1:])
    report = (
        "# Rollout control plane\n\n"
        f"Command: `{command.strip()}`  \nMachine: {machine()}\n\n"
        "Sidecars are real processes on this machine (the tables are published by the "
        "benchmark; nothing serves tokens), driven over HTTP with the operator's client.\n\n"
        f"## Barrier round: prepare + commit on every sidecar, no data ({args.rounds} rounds)\n\n"
        "Wall time on this machine (every process on its 2 shared cores), and CPU per round: "
        "of one sidecar (mean over the sidecars, their idle CPU over as long subtracted) and "
        "of the operator's client per sidecar (HTTP, JSON, the asyncio loop).\n\n"
        + table(
            [
                "sidecars",
                "median ms",
                "p90 ms",
                "max ms",
                "sidecar CPU-ms / round",
                "operator CPU-ms / sidecar",
            ],
            rows,
        )
        + f"\n\nModelled wall time on a cluster (every sidecar on cores of its own): "
        f"sidecars × operator CPU-ms per sidecar + one sidecar's CPU-ms, from the "
        f"{basis.sidecars}-sidecar run; network latency left out. Goal: < 100 ms at 64.\n\n"
        + table(["sidecars", "modelled ms", "< 100 ms"], modelled)
        + "\n\n"
        + (
            full_section(args, full_rollout(args.pods, args.layers, args.layers_per_step))
            if args.pods
            else ""
        )
    )
    previous = previous_section(args.output)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report + ("\n" + previous if previous else ""))
    print(report)


if __name__ == "__main__":
    main()
