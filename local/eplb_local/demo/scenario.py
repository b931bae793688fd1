"""The demo's script: skewed load → the operator rebalances → the skew shifts → again.

Each phase measures the imbalance the engines actually lived with (their own token
counters, summed over the group as EP's all-to-all delivers them) before and after the
operator's rollout, checks DESIGN.md §5 after every rollout (one placement on every pod,
exact weights, the same model outputs), and injects the ``--fault`` when asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from eplb_local.demo.options import NAME, DemoOptions, Fault, placement_manifest
from eplb_local.demo.summary import DemoSummary, FaultResult, PhaseResult
from eplb_local.demo.view import DemoView
from eplb_local.demo.watch import XPL_PATH, OperatorWatch, condition
from eplb_local.demo.world import DemoWorld
from eplb_local.world.periodic import Periodic
from eplb_operator.placement.views import rank_imbalance
from eplb_operator.report.recording import LoadSample, Recording, RolloutRecord

POLL_SECONDS = 0.25
SAMPLE_SECONDS = 1.0
NOW_SECONDS = 3.0  # the live view's "now" column
ROLLOUT_SECONDS = 90.0  # how long a rollout under way may take, operator restarts included
# How long the operator's first pass may take: a fresh pod compiles the placement kernels
# (numba) unless its compile cache has them: a minute or more on a busy 2-core machine.
FIRST_PASS_SECONDS = 240.0


class Sampler(Periodic):
    """Every second, the tokens each rank received since the last sample, into the recording
    (saved each time, so ``eplb report`` can draw a running demo)."""

    def __init__(self, world: DemoWorld, recording: Recording, directory: Path) -> None:
        super().__init__("sampler", SAMPLE_SECONDS)
        self.world = world
        self.recording = recording
        self.directory = directory
        self.lock = threading.Lock()
        self._last, self._last_time = world.group_load(), time.time()

    def save(self) -> None:
        with self.lock:
            self.recording.save(self.directory)

    def tick(self) -> None:
        load, now = self.world.group_load(), time.time()
        sample = LoadSample(
            time=now, seconds=now - self._last_time, rank_load=(load - self._last).double().tolist()
        )
        with self.lock:
            self.recording.samples.append(sample)
        self._last, self._last_time = load, now
        self.save()


class Demo:
    def __init__(self, options: DemoOptions, workdir: Path, view: DemoView) -> None:
        self.options = options
        self.workdir = workdir
        self.view = view
        self.state = view.state
        title = (
            f"sandbox: {options.ranks} ranks × {options.layers} layers, {options.experts} experts "
            f"+ {options.redundant} redundant"
        )
        self.recording = Recording(title=title, layers=options.layers, ranks=options.ranks)
        self.problems: list[str] = []
        self.outputs_identical = True
        self.consistent = True
        self.fault_notes: list[str] = []
        self.fault_injected = False
        self.operator_restarts = 0
        self._interrupted_revision: str | None = None  # the rollout the operator died in
        self._fault_done = False
        self._prometheus_stopped_at: float | None = None
        self._observed: float | None = None
        self._applied = 0.0  # when the ExpertPlacement was applied (time.time())

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> DemoSummary:
        started = time.monotonic()
        with DemoWorld(self.options, self.workdir, self.view.say) as world:
            self.world = world
            self.watch = OperatorWatch(world.api, self._operator_metrics_url)
            self.recording.rollouts = self.watch.rollouts
            self.state.rollouts = self.watch.rollouts
            self.state.layers_total = self.options.layers
            self.baseline = world.serving.probe()
            self.sampler = Sampler(world, self.recording, self.workdir)
            self.sampler.start()
            try:
                phases = self._phases()
            finally:
                self.sampler.stop()
                self.sampler.save()
            self._check("at the end")
            restarts = world.sidecar_restarts()
        return self._summary(phases, time.monotonic() - started, restarts)

    def _phases(self) -> list[PhaseResult]:
        options = self.options
        phases = [self._phase("skewed load", apply=True)]
        if options.shift and phases[0].rebalanced:
            phases.append(self._phase("skew shifted", apply=False))
        return phases

    def _phase(self, name: str, apply: bool) -> PhaseResult:
        W = self.options.window_seconds
        self.state.phase = name
        self.state.before, self.state.after = [], []
        start = time.time()
        shifted: float | None = None
        if apply:
            self.view.say(f"{name}: Zipf skew {self.options.skew}; letting the {W} s load window "
                          "fill before the ExpertPlacement is applied")  # fmt: skip
            self._wait_until(start + W)
            self._before_apply()
            self._apply()
        else:
            self.world.serving.set_workload(shift=1)
            shifted = time.time()
            # The gate's popularity is part of the model: the reference outputs change with it.
            self.baseline = self.world.serving.probe()
            self.view.say(f"{name}: other experts are hot now; the operator's next pass "
                          f"(every {self.options.interval_seconds} s) should notice")  # fmt: skip
        done_before = len(self.watch.completed())

        def planned_from_this_phase() -> bool:
            # After a shift, a pass whose window opened before it plans for a mix of the old
            # and new load (on a loaded machine the passes drift off the schedule that the
            # interval sets); the phase is answered by a rollout whose window saw the new
            # load alone.
            fresh = self.watch.completed()[done_before:]
            return any(shifted is None or (r.started or 0.0) >= shifted + W for r in fresh)

        deadline = time.time() + 3 * self.options.interval_seconds + 30
        record = self._wait_for(planned_from_this_phase, deadline, f"a rollout in phase '{name}'")
        result = PhaseResult(name=name, imbalance_before=None, imbalance_after=None)
        before = self.recording.window(
            start + 1, (record.started if record else None) or time.time()
        )
        if before is not None:
            result.per_layer_before, result.imbalance_before = _per_layer_and_mean(before)
            self.state.before = result.per_layer_before
        if record is None:
            return result
        result.rebalanced = True
        self._check(f"after {record.revision}")
        finished = record.finished or time.time()
        measure = max(5.0, W / 2)
        if apply and self.options.shift and record.started is not None:
            # Shift before the next pass's window opens (interval = 2 × window after the read).
            measure = max(3.0, record.started + W - 1.5 - finished)
        self._wait_until(finished + measure)
        after = self.recording.window(finished + 0.5, time.time())
        if after is not None:
            result.per_layer_after, result.imbalance_after = _per_layer_and_mean(after)
            self.state.after = result.per_layer_after
            self.view.say(f"{name}: imbalance {result.imbalance_before or 0:.3f} → "
                          f"{result.imbalance_after:.3f}")  # fmt: skip
        return result

    # -- waiting, with the view and the fault driven meanwhile -----------------------------
    def _tick(self) -> None:
        for line in self.watch.poll():
            self.view.say(line)
        status = self.watch.status
        conditions = " ".join(
            f"{kind}={c.get('status')}({c.get('reason')})"
            for kind in ("Ready", "Progressing", "Degraded")
            if (c := condition(status, kind))
        )
        if conditions != self.state.conditions:
            degraded = condition(status, "Degraded")
            detail = f": {degraded.get('message')}" if degraded.get("status") == "True" else ""
            self.view.say(f"[dim]conditions {conditions}{detail}[/dim]")
            self.state.conditions = conditions
        observed = status.get("balancedness")
        if observed is not None and observed != self._observed:
            self._observed = observed
            self.view.say(f"the operator measured balancedness {observed:.3f} over its window")
        if status.get("layersTotal"):
            self.state.layers_total = int(status["layersTotal"])
        with self.sampler.lock:
            recent = self.recording.window(time.time() - NOW_SECONDS, time.time())
        if recent is not None:
            self.state.now = rank_imbalance(recent).tolist()
        self._drive_fault()

    def _wait_until(self, when: float) -> None:
        while time.time() < when:
            self._tick()
            time.sleep(POLL_SECONDS)

    def _wait_for(
        self, done: Callable[[], bool], deadline: float, what: str
    ) -> RolloutRecord | None:
        while time.time() < self._extended(deadline):
            self._tick()
            if done():
                return self.watch.completed()[-1]
            time.sleep(POLL_SECONDS)
        self.problems.append(f"no {what} within the deadline (status: {self.state.conditions})")
        self.view.say(f"[red]gave up waiting for {what}[/red]")
        return None

    def _extended(self, deadline: float) -> float:
        """The deadline, or later: until the operator's first pass reports (a fresh pod may
        compile its placement kernels first), and while a rollout is under way (a restarted
        operator continues it from where the last one stopped)."""
        if not self.watch.status.get("conditions"):  # no pass reported yet
            deadline = max(deadline, self._applied + FIRST_PASS_SECONDS)
        current = self.watch.current
        if current is None or current.started is None:
            return deadline
        return max(deadline, current.started + ROLLOUT_SECONDS)

    def _operator_metrics_url(self) -> str:
        pod = self.world.serving.operator_pod()
        return f"http://{pod['status']['podIP']}:8080/metrics"

    def _apply(self) -> None:
        prometheus = self.world.serving.prometheus
        url = prometheus.url if prometheus is not None else None
        layers_per_step = 1 if self.options.fault is Fault.restart_operator_mid_rollout else 2
        manifest = placement_manifest(self.options, url, layers_per_step)
        collection = XPL_PATH.rsplit("/", 1)[0]
        self.world.api.checked("POST", collection, manifest)
        self._applied = time.time()
        self.view.say(f"applied ExpertPlacement {NAME} (online: every "
                      f"{self.options.interval_seconds} s over a {self.options.window_seconds} s "
                      "window)")  # fmt: skip

    # -- checks ----------------------------------------------------------------------------
    def _check(self, when: str) -> None:
        errors = self.world.errors()
        if errors:
            self.consistent = False
            self.problems.append(f"{when}: {errors[0]} ({len(errors)} problems)")
        if not torch.equal(self.world.serving.probe(), self.baseline):
            self.outputs_identical = False
            self.problems.append(f"{when}: the engines' outputs for the probe inputs changed")
        if not errors:
            outputs = "identical" if self.outputs_identical else "CHANGED"
            self.view.say(
                f"{when}: every pod serves the same placement with exact weights; outputs {outputs}"
            )

    # -- faults ----------------------------------------------------------------------------
    def _before_apply(self) -> None:
        fault = self.options.fault
        if fault is Fault.prometheus_down and self.world.serving.prometheus is not None:
            self.world.serving.prometheus.stop()
            self._prometheus_stopped_at = time.time()
            self.fault_injected = True
            self.view.say("[yellow]fault: Prometheus stopped[/yellow]")

    def _drive_fault(self) -> None:
        fault, world = self.options.fault, self.world
        if fault is None or self._fault_done:
            return
        if fault in (Fault.kill_sidecar_at_prepare, Fault.kill_sidecar_at_commit):
            victim = world.victim()
            if world.serving.restarts(victim.name, "eplb-sidecar"):
                self.fault_injected = True
                self._fault_done = True
                self.fault_notes.append(f"sidecar of {victim.name} died (exit 137) and the "
                                        "node restarted the container")  # fmt: skip
                self.view.say(f"[yellow]fault: {self.fault_notes[-1]}[/yellow]")
        elif fault is Fault.slow_pod:
            aborted = self.watch.aborted()
            if aborted:
                self.fault_injected = True
                self._fault_done = True
                pod = world.victim()
                self.fault_notes.append(f"{pod.name} prepared slower than the barrier timeout: "
                                        f"{aborted[0].revision} aborted ({aborted[0].reason}); "
                                        "the pod recovered")  # fmt: skip
                self.view.say(f"[yellow]fault: {self.fault_notes[-1]}[/yellow]")
                world.serving.clear(pod)  # no longer slow
        elif fault is Fault.restart_operator_mid_rollout:
            status, record = self.watch.status, self.watch.current
            committed, total = status.get("layersCommitted") or 0, status.get("layersTotal") or 0
            if record is not None and 1 <= committed < total:
                world.serving.kill_operator()  # a crash: the node restarts the container
                self.fault_injected = True
                self._fault_done = True
                self.operator_restarts += 1
                self._interrupted_revision = record.revision
                self.fault_notes.append(f"operator killed at {committed}/{total} layers of "
                                        f"{record.revision}; the node restarted it")  # fmt: skip
                self.view.say(f"[yellow]fault: {self.fault_notes[-1]}[/yellow]")
        elif fault is Fault.prometheus_down and self._prometheus_stopped_at is not None:
            degraded = condition(self.watch.status, "Degraded")
            down = time.time() - self._prometheus_stopped_at
            seen = degraded.get("reason") == "MetricsUnavailable"
            if (seen and down > 3) or down > 20:
                assert world.serving.prometheus is not None
                self.fault_notes.append(
                    f"Prometheus down for {down:.0f} s: "
                    + (f"Degraded/MetricsUnavailable ({degraded.get('message', '')[:80]})"
                       if seen else "the operator never said MetricsUnavailable")
                    + f", {len(self.watch.rollouts)} rollouts meanwhile"
                )  # fmt: skip
                if not seen:
                    self.problems.append("Prometheus was down but the operator did not report it")
                if self.watch.rollouts:
                    self.problems.append("a rollout started while Prometheus was down")
                world.serving.prometheus.start()
                self._fault_done = True
                self.view.say(
                    f"[yellow]fault: {self.fault_notes[-1]}; Prometheus restarted[/yellow]"
                )

    def _fault_result(self, restarts: int) -> FaultResult | None:
        fault = self.options.fault
        if fault is None:
            return None
        completed = self.watch.completed()
        if not self.fault_injected:
            outcome = "the fault never happened"
            self.problems.append(f"--fault {fault.value} was not injected")
        elif completed:
            first = completed[0]
            outcome = "; ".join(self.fault_notes) + (
                f"; then {first.revision} completed ({first.layers} layers, {first.moves} moves)"
            )
        else:
            outcome = "; ".join(self.fault_notes) + "; no rollout completed afterwards"
        if fault is Fault.restart_operator_mid_rollout and self.fault_injected and completed:
            interrupted = self._interrupted_revision
            if completed[0].revision != interrupted:
                self.problems.append(
                    f"the restarted operator completed {completed[0].revision}, not the "
                    f"interrupted {interrupted}: it re-planned instead of resuming"
                )
            else:
                outcome += " (resumed, not re-planned)"
        return FaultResult(
            name=fault.value,
            injected=self.fault_injected,
            outcome=outcome,
            sidecar_restarts=restarts,
            operator_restarts=self.operator_restarts,
        )

    # -- the result ------------------------------------------------------------------------
    def _summary(self, phases: list[PhaseResult], seconds: float, restarts: int) -> DemoSummary:
        completed = self.watch.completed()
        fault = self._fault_result(restarts)
        for phase in phases:
            if (phase.imbalance_before is not None and phase.imbalance_after is not None
                    and phase.imbalance_after >= phase.imbalance_before):  # fmt: skip
                self.problems.append(f"{phase.name}: imbalance did not improve")
        expected = 2 if self.options.shift else 1
        ok = (
            len([p for p in phases if p.rebalanced]) == expected
            and self.outputs_identical
            and self.consistent
            and not self.problems
        )
        return DemoSummary(
            imbalance_before=phases[0].imbalance_before,
            imbalance_after=phases[-1].imbalance_after,
            rebalances=len(completed),
            layers_committed=sum(r.layers for r in completed),
            rollout_seconds=round(sum(r.seconds or 0.0 for r in completed), 3),
            moves=sum(r.moves for r in completed),
            outputs_identical=self.outputs_identical,
            consistent=self.consistent,
            aborted=len(self.watch.aborted()),
            fault=fault,
            prometheus=self.world.use_prometheus,
            phases=phases,
            rollouts=list(self.watch.rollouts),
            problems=self.problems,
            seconds=round(seconds, 1),
            ok=ok,
        )


def _per_layer_and_mean(rank_load: torch.Tensor) -> tuple[list[float], float]:
    """Imbalance of ``rank_load`` ``[L, R]``: per layer, and its mean over layers."""
    per_layer = rank_imbalance(rank_load)
    return per_layer.tolist(), float(per_layer.mean())
