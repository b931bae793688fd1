"""Soak: many rebalances under continuous inference, with components killed along the way.

    python benchmarks/soak.py                      # 1000 rebalances, writes results/soak.md
    python benchmarks/soak.py --rebalances 12 --kill-every 2 --max-minutes 8  # CI size

A group of reference engines (real processes) serves tokens all the time; every rebalance
shifts the workload's skew (a new expert popularity order), measures the load window from
the sidecars' own ``/metrics`` (the operator's scrape source), plans with the placement
engine from what the pods serve, and rolls the plan out as a new revision with the
operator's :class:`~eplb_operator.controller.rollout.Rollout`, real peer transfers included.
After every rollout DESIGN.md §5 is checked on every pod: one placement in the group, every
logical expert with a replica, every slot's weights exactly its expert's, and the model's
outputs for fixed inputs unchanged.

Every ``--kill-every`` rebalances one component, picked at random, is killed in the middle
of a rollout:
- ``sidecar``: SIGKILL of one pod's sidecar; restarted on its ports, as a kubelet does;
- ``pod``: both processes of one pod killed, the pod started again from its start-up
  placement (a deleted pod the StatefulSet creates again);
- ``operator``: the rollout task cancelled mid-call, every client dropped and nothing
  remembered (the operator here is this process: its crash is what the pods see, open
  connections cut and staging left behind).
The rollout is then retried, as the operator's next pass does, until it completes; §5 is
checked after it.  Operator (this process) and sidecar RSS and open file descriptors are
read from /proc at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import machine, table
from eplb_local.engine.verify import group_errors
from eplb_local.launch import LocalGroup, post
from eplb_local.world.endpoints import local_endpoints
from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.controller.loads import MetricsUnavailableError, ScrapeSource
from eplb_operator.controller.reconcile import most_common_rows
from eplb_operator.controller.rollout import (
    Rollout,
    RolloutAbortedError,
    RolloutOptions,
    RolloutReport,
    pending_layers,
    pod_states,
)
from eplb_operator.controller.sessions import TransferSessions
from eplb_operator.placement import PlanOptions, Topology, plan
from eplb_sidecar.api import CommitRequest, Info, PrepareRequest
from eplb_sidecar.client import SidecarClient, SidecarError
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.checkpoint import write_checkpoint
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.probe import ProbeMismatchError

RESULTS = Path(__file__).resolve().parent / "results" / "soak.md"
COMPONENTS = ("sidecar", "pod", "operator")
# A process whose RSS grew more than this over the run leaks (the allocator's and torch's
# caches settle within the first rebalances).
RSS_GROWTH_BOUND = 64 * 2**20
FD_GROWTH_BOUND = 16
START_TIMEOUT = 600.0  # a loaded machine starts processes slowly
SHIFTS = 6  # popularity orders the skew cycles through
RETRIES = 20  # rollout attempts after a fault before the soak gives up


@dataclass
class Usage:
    """Resident memory (bytes) and open file descriptors of one process."""

    rss: int
    fds: int

    @staticmethod
    def of(pid: int) -> Usage:
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
        return Usage(rss, len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class Soak:
    """Counts of one soak run; ``violations`` lists every §5 failure seen."""

    rebalances: int = 0
    rollouts_retried: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))
    violations: list[str] = field(default_factory=list)
    moves: int = 0
    sessions: int = 0  # transfer sessions (process groups) started
    scrape_retries: int = 0  # load windows read again after a scrape failed
    seconds: float = 0.0
    usage_start: dict[str, Usage] = field(default_factory=dict)
    usage_end: dict[str, Usage] = field(default_factory=dict)

    def growth_problems(self) -> list[str]:
        """Processes whose memory or descriptors grew past the bounds (same process only:
        a restarted sidecar starts afresh)."""
        problems = []
        for name, end in self.usage_end.items():
            start = self.usage_start.get(name)
            if start is None:
                continue
            if end.rss - start.rss > RSS_GROWTH_BOUND:
                problems.append(f"{name}: RSS {start.rss >> 20} → {end.rss >> 20} MiB")
            if end.fds - start.fds > FD_GROWTH_BOUND:
                problems.append(f"{name}: fds {start.fds} → {end.fds}")
        return problems


def soak_config() -> EngineConfig:
    """Small shapes: 4 ranks, 4 layers, 12 experts in 16 slots, tiny experts."""
    return EngineConfig(
        ranks=4, layers=4, experts=12, slots_per_rank=4, hidden=16, intermediate=8,
        workload=Workload(skew=1.4, tokens_per_step=64, step_interval=0.02,
                          tokens_per_second=2000),
    )  # fmt: skip


def usage(group: LocalGroup) -> dict[str, Usage]:
    """This process (the operator's code) and every live sidecar, by name."""
    found = {"operator": Usage.of(os.getpid())}
    for pod in group.pods:
        if pod.sidecar is not None and pod.sidecar.poll() is None:
            found[f"sidecar {pod.name} (pid {pod.sidecar.pid})"] = Usage.of(pod.sidecar.pid)
    return found


class Driver:
    """The rebalance loop of one soak: the operator's decide-and-roll-out path, no API."""

    def __init__(self, group: LocalGroup, rng: random.Random, window_seconds: int) -> None:
        self.group = group
        self.config = group.config
        self.rng = rng
        self.window_seconds = window_seconds
        self.topology = Topology(self.config.experts, self.config.ranks,
                                 self.config.slots_per_rank, 1, 1)  # fmt: skip
        self.scrape = ScrapeSource(timeout=10.0)
        self.options = RolloutOptions(layers_per_step=2, barrier_timeout=10,
                                      progress_deadline=300)  # fmt: skip
        # The reference model's gate is biased by the workload's popularity order: its
        # outputs for fixed inputs, as served from the start-up placement, per shift.
        self.expected: dict[int, torch.Tensor] = {}
        for shift in range(SHIFTS):
            group.set_workload(shift=shift)
            self.expected[shift] = group.probe()
        self.shift = 0
        # Kept across rebalances as the operator keeps them per placement (sessions.py).
        self.sessions = TransferSessions()
        self.sessions_before = 0  # started by the sessions of earlier "operator" processes
        self.scrape_retries = 0  # windows read again after a scrape failed
        self.verbose = bool(os.environ.get("EPLB_SOAK_VERBOSE"))

    def clients(self) -> dict[str, SidecarClient]:
        return {
            pod.name: SidecarClient(pod.control_url, self.group.token) for pod in self.group.pods
        }

    async def states(self) -> dict[str, Info]:
        """Every pod's ``/v1/info`` with its placement."""
        clients = self.clients()
        try:
            return await pod_states(local_endpoints(self.group), clients)
        finally:
            await asyncio.gather(*(c.close() for c in clients.values()))

    async def served(self) -> torch.Tensor:
        """``[L, P]`` rank 0 serves (the whole group, after every rollout)."""
        placement = (await self.states())[self.group.pods[0].name].placement
        assert placement is not None
        return torch.tensor(placement, dtype=torch.int64)

    async def next_target(self, shift: int) -> torch.Tensor | None:
        """Shift the skew, read the window, plan from what is served (None: no change)."""
        self.shift = shift % SHIFTS
        self.group.set_workload(shift=self.shift)
        await asyncio.sleep(self.window_seconds / 2)  # part of the window is the new skew
        urls = {pod.name: pod.metrics_url for pod in self.group.pods}
        for attempt in range(1, RETRIES + 1):
            try:
                window = await self.scrape.window(
                    urls, self.window_seconds, self.config.layers, self.config.experts
                )
                break
            except MetricsUnavailableError as error:
                # The operator reports it (Degraded) and tries again on its next pass: a
                # scrape can time out on a machine busy with other work.
                self.scrape_retries += 1
                self.log(f"window attempt {attempt}: {error}")
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(1.0)
        served = await self.served()
        planned = await asyncio.to_thread(
            plan, window.load, self.topology, served, None, PlanOptions(slack=0.0)
        )
        if torch.equal(planned.placement, served):
            return None
        return planned.placement

    async def roll_out(self, target: torch.Tensor, fault: str | None) -> tuple[int, int]:
        """Roll ``target`` out, with ``fault`` injected into the first attempt; attempted
        again (as the operator's next pass does) until every pod serves it.  Returns (moves,
        attempts)."""
        moves = 0
        for attempt in range(1, RETRIES + 1):
            await self.recover()
            states = await self.states()
            if not pending_layers(states, target):
                return moves, attempt - 1
            highest = max(max(info.revisions, default=0) for info in states.values())
            clients = self.clients()
            rollout = Rollout(local_endpoints(self.group), clients, highest + 1, target,
                              self.options, pod_alive=self.alive,
                              sessions=self.sessions)  # fmt: skip
            task = asyncio.ensure_future(self.resync_then(rollout, states, clients))
            try:
                if fault is not None and attempt == 1:
                    await self.inject(fault, task)
                moves += (await task).moves
            except (RolloutAbortedError, SidecarError, asyncio.CancelledError, OSError) as error:
                # The next attempt starts from what the pods say.
                self.log(f"attempt {attempt} ({fault}): {type(error).__name__}: {error}")
            finally:
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await asyncio.gather(*(c.close() for c in clients.values()))
        raise RuntimeError(f"no rollout of the target after {RETRIES} attempts")

    async def resync_then(
        self, rollout: Rollout, states: dict[str, Info], clients: dict[str, SidecarClient]
    ) -> RolloutReport:
        """A pod created again serves its start-up placement: first bring it to what the
        others serve, each layer at the revision they hold it at (a group's pods must agree
        on both before a group rollout), from its checkpoint; then run ``rollout``."""
        majority = most_common_rows(
            [torch.tensor(info.placement) for info in states.values() if info.placement]
        ).tolist()
        for name, info in states.items():
            assert info.placement is not None
            behind = [layer for layer, row in enumerate(majority) if info.placement[layer] != row]
            by_revision: dict[int, list[int]] = {}
            for layer in behind:
                holder = next(i for i in states.values() if i.placement and i.placement[layer]
                              == majority[layer])  # fmt: skip
                by_revision.setdefault(holder.revisions[layer], []).append(layer)
            for revision, layers in sorted(by_revision.items()):
                rows = {layer: majority[layer] for layer in layers}
                await clients[name].prepare(PrepareRequest(revision=revision, layers=rows,
                                                           timeout_seconds=30))  # fmt: skip
                await clients[name].commit(CommitRequest(revision=revision, layers=layers))
        return await rollout.run()

    def log(self, line: str) -> None:
        if self.verbose:
            print(line, file=sys.stderr, flush=True)

    async def alive(self, pod: PodEndpoint) -> bool:
        """The pod exists (its engine runs); a dead sidecar alone is a container restart."""
        local = next(p for p in self.group.pods if p.name == pod.name)
        return local.engine is not None and local.engine.poll() is None

    async def inject(self, fault: str, task: asyncio.Future[RolloutReport]) -> None:
        """Kill ``fault``'s component at a random moment of the rollout ``task`` (or just
        after it, when it was quicker)."""
        await asyncio.wait({task}, timeout=self.rng.uniform(0.0, 0.4))
        victim = self.rng.choice(self.group.pods)
        if fault == "sidecar":
            self.group.kill(victim, "sidecar")
        elif fault == "pod":
            self.group.kill(victim, "sidecar")
            self.group.kill(victim, "engine")
        else:  # operator: the pass dies with whatever it had in flight
            task.cancel()
            self.sessions_before += self.sessions.started
            self.sessions = TransferSessions()  # a new operator remembers no session

    async def recover(self) -> None:
        """What the node does for dead containers: sidecars started again on their ports,
        a pod whose engine died created again from its start-up placement."""
        for pod in list(self.group.pods):
            engine_dead = pod.engine is not None and pod.engine.poll() is not None
            sidecar_dead = pod.sidecar is not None and pod.sidecar.poll() is not None
            if engine_dead:
                fresh = await asyncio.to_thread(self.group.restart_pod, pod, START_TIMEOUT)
                # A new engine starts on the chart's workload: serve what the others serve.
                body = json.dumps({"shift": self.shift}).encode()
                await asyncio.to_thread(post, f"{fresh.engine_url}/v1/workload", body)
            elif sidecar_dead:
                self.group.start_sidecar(pod)
                await asyncio.to_thread(self.group.wait_ready, START_TIMEOUT)

    def violations(self) -> list[str]:
        """DESIGN.md §5 on every pod now."""
        tables = [ExpertTable.attach(pod.table_dir) for pod in self.group.pods]
        try:
            errors = group_errors(tables, self.config.seed)
        finally:
            for view in tables:
                view.close()
        try:
            if not torch.equal(self.group.probe(), self.expected[self.shift]):
                errors.append("the model's outputs changed")
        except ProbeMismatchError as error:
            errors.append(f"the ranks disagree on routing: {error}")
        return errors


async def soak(group: LocalGroup, rebalances: int, kill_every: int, seed: int,
               window_seconds: int, log: bool, max_minutes: float) -> Soak:  # fmt: skip
    rng = random.Random(seed)
    driver = Driver(group, rng, window_seconds)
    result = Soak()
    started = time.monotonic()
    # The clock starts after the warm-up rebalance (the planner's kernels loaded or compiled,
    # first sessions): what a minute buys is then the same on a cold and a warm checkout.
    deadline = float("inf")
    shift = 0
    upcoming: list[str] = []
    while result.rebalances < rebalances and time.monotonic() < deadline:
        shift += 1
        target = await driver.next_target(shift)
        if target is None:
            continue
        due = kill_every > 0 and (result.rebalances + 1) % kill_every == 0
        if due and not upcoming:  # every kind once per round, in a random order
            upcoming = rng.sample(COMPONENTS, len(COMPONENTS))
        fault = upcoming.pop() if due else None
        moves, attempts = await driver.roll_out(target, fault)
        result.rebalances += 1
        result.moves += moves
        result.rollouts_retried += attempts - 1
        if fault is not None:
            result.faults[fault] += 1
        served = await driver.served()
        problems = driver.violations()
        if not torch.equal(served, target):
            problems.append("the group does not serve the rolled-out target")
        result.violations += [f"rebalance {result.rebalances}: {p}" for p in problems]
        if result.rebalances == 1:  # after warm-up: the planner's kernels, first sessions
            result.usage_start = usage(group)
            deadline = time.monotonic() + max_minutes * 60
        if log and result.rebalances % 10 == 0:
            print(f"{result.rebalances} rebalances, {sum(result.faults.values())} faults, "
                  f"{len(result.violations)} violations, {time.monotonic() - started:.0f} s",
                  flush=True)  # fmt: skip
    result.seconds = time.monotonic() - started
    result.sessions = driver.sessions_before + driver.sessions.started
    result.scrape_retries = driver.scrape_retries
    result.usage_end = usage(group)
    return result


def run(rebalances: int, kill_every: int, seed: int = 0, window_seconds: int = 1,
        log: bool = False, max_minutes: float = 600.0) -> Soak:  # fmt: skip
    """A whole soak on a fresh local group.  Its directory (the processes' logs) is removed
    afterwards unless the soak failed."""
    workdir = tempfile.mkdtemp(prefix="eplb-soak-")
    try:
        config = soak_config()
        # A pod created again fetches what no peer holds from the model's checkpoint.
        checkpoint = Path(workdir) / "checkpoint"
        write_checkpoint(checkpoint, config)
        group = LocalGroup(config, Path(workdir) / "pods", checkpoint=checkpoint)
        group.start(START_TIMEOUT)
        try:
            result = asyncio.run(
                soak(group, rebalances, kill_every, seed, window_seconds, log, max_minutes)
            )
        finally:
            group.stop()
    except BaseException:
        print(f"soak failed: its processes' logs are kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(result: Soak, command: str) -> str:
    usage_rows = [
        [name, f"{start.rss / 2**20:.0f}", f"{end.rss / 2**20:.0f}", str(start.fds), str(end.fds)]
        for name, start in result.usage_start.items()
        if (end := result.usage_end.get(name)) is not None
    ]
    restarted = sorted(set(result.usage_end) - set(result.usage_start))
    faults = ", ".join(f"{name} {count}" for name, count in result.faults.items())
    growth = result.growth_problems()
    lines = [
        "# Soak",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}",
        "",
        "A group of 4 reference engines (4 layers, 12 experts in 16 slots) serving tokens the "
        "whole time; each rebalance shifts the skew, measures the window from the sidecars' "
        "metrics, plans from what is served and rolls out through the operator's rollout code "
        "with real peer transfers. DESIGN.md §5 is checked on every pod after every rollout. "
        "Transfer sessions are kept across rollouts as the operator keeps them; each fault "
        "starts a new one.",
        "",
        table(
            [
                "rebalances",
                "faults injected",
                "retried rollouts",
                "slots moved",
                "transfer sessions",
                "windows read again",
                "violations",
                "minutes",
            ],
            [
                [
                    str(result.rebalances),
                    faults,
                    str(result.rollouts_retried),
                    str(result.moves),
                    str(result.sessions),
                    str(result.scrape_retries),
                    str(len(result.violations)),
                    f"{result.seconds / 60:.1f}",
                ]
            ],
        ),
        "",
        f"Memory and descriptors after the first rebalance (warm-up) and at the end, of "
        f"processes alive throughout (bound: "
        f"+{RSS_GROWTH_BOUND >> 20} MiB RSS, +{FD_GROWTH_BOUND} fds):",
        "",
        table(["process", "RSS start MiB", "RSS end MiB", "fds start", "fds end"], usage_rows),
        "",
        f"Restarted during the run (not compared): {', '.join(restarted) or 'none'}.",
        f"Growth past the bounds: {'; '.join(growth) or 'none'}.",
    ]
    if result.violations:
        lines += ["", "Violations:", "", *(f"- {v}" for v in result.violations[:50])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebalances", type=int, default=1000)
    parser.add_argument("--kill-every", type=int, default=10, help="rebalances per fault")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=600.0,
                        help="stop this long after the warm-up rebalance")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS, help="the report's file")
    parser.add_argument("--no-write", action="store_true", help="print, not write, the report")
    args = parser.parse_args()
    result = run(
        args.rebalances, args.kill_every, args.seed, log=True, max_minutes=args.max_minutes
    )
    command = "python benchmarks/soak.py " + shlex.join(sys.argv[1:])
    text = report(result, command.strip())
    print(text)
    if not args.no_write:
        args.output.write_text(text)
    if result.violations or result.growth_problems():
        sys.exit(1)


if __name__ == "__main__":
    main()
