"""An engine process serving a Hugging Face MoE model through the engine contract.

One process per EP rank.  At start-up it builds the tiny model (:mod:`.models`), publishes
its table with the start-up placement's experts in its own slots only, joins the engines'
process group and puts an :class:`~.experts.ExpertParallelExperts` in place of every MoE
block's ``experts``.

Every step is a round of the whole group, inside ``table.engine_step()`` (the step lock):

1. **Agree**: the ranks all-gather one row each: rank 0's workload (tokens, skew, shift),
   each rank's pending probe, whether a rank is stopping, and each rank's *own* slots
   ``[L, S]`` as its table says now.  Everyone derives the same plan from the same rows.
2. **Dispatch map**: the group's placement is the ranks' own slots side by side — what the
   weights really are, not what a sidecar's routing row says about other ranks.  Sidecars
   commit one pod at a time, so for a moment ranks may serve different revisions; the map
   stays true throughout.  If it lacks an expert (one pod gave it up, the pod that takes it
   over has not committed yet), the round serves nothing and is retried once the locks
   were released, which lets the missing commit land.
3. **Serve**: the probes some rank asked for (logits of fixed prompts; not counted), then
   the workload batch (counted per slot into ``counters``, per rank into ``group_load``).

A commit thus changes what the model computes at the next step boundary, and, because
outputs do not depend on the placement (:mod:`.dispatch`), never changes the logits.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from eplb_core.placements import placement_error
from eplb_sidecar.adapters.transformers.exchange import EngineGroup
from eplb_sidecar.adapters.transformers.experts import (
    ExpertParallelExperts,
    LayerRoutes,
    MoeStep,
)
from eplb_sidecar.adapters.transformers.models import VOCAB, build_model, moe_blocks
from eplb_sidecar.adapters.transformers.options import ModelShape, TransformersOptions
from eplb_sidecar.adapters.transformers.probe import LogitsProbe
from eplb_sidecar.adapters.transformers.prompts import probe_prompt, workload_batch
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.probe import ProbeRequest
from eplb_sidecar.engine.routing import replica_table
from eplb_sidecar.engine.serving import serve_paced
from eplb_sidecar.engine.startup import publish_start_up_table

log = logging.getLogger("eplb_sidecar.adapters.transformers")

_RETRY_SECONDS = 0.002  # between rounds that waited for a commit on another pod
_WARN_AFTER_SECONDS = 5.0  # a commit that takes this long is worth a line in the log
_PROBE_TIMEOUT_SECONDS = 120.0
_HEADER = 6  # stop, tokens, shift, skew (float64 bits), probe tokens, probe seed


@dataclass
class _PendingProbe:
    request: ProbeRequest
    done: threading.Event = field(default_factory=threading.Event)
    answer: LogitsProbe | None = None
    error: str = ""


@dataclass(frozen=True)
class _Plan:
    """What the group agreed to do this round."""

    stop: bool
    tokens: int
    skew: float
    shift: int
    probes: list[tuple[int, ProbeRequest]]  # (asking rank, request), in rank order
    placement: torch.Tensor  # [L, P] the ranks' own slots side by side

    @classmethod
    def of(cls, rows: torch.Tensor, layers: int, slots_per_rank: int) -> _Plan:
        """From the gathered rows ``[R, _HEADER + L·S]``."""
        ranks = rows.shape[0]
        own = rows[:, _HEADER:].view(ranks, layers, slots_per_rank)
        return cls(
            stop=bool(rows[:, 0].any()),
            tokens=int(rows[0, 1]),
            shift=int(rows[0, 2]),
            skew=struct.unpack("<d", struct.pack("<q", int(rows[0, 3])))[0],
            probes=[
                (rank, ProbeRequest(tokens=int(rows[rank, 4]), seed=int(rows[rank, 5])))
                for rank in range(ranks)
                if int(rows[rank, 4]) > 0
            ],
            placement=own.permute(1, 0, 2).reshape(layers, ranks * slots_per_rank),
        )


class TransformersEngine:
    """One EP rank of a Hugging Face MoE model, publishing its table in ``table_dir``."""

    def __init__(self, config: EngineConfig, options: TransformersOptions, table_dir: Path):
        self.config = config
        self.options = options
        self.workload = config.workload
        self.shape = ModelShape.of(options.architecture, config)
        self.device = torch.device(config.device)
        model = build_model(self.shape, routed_experts=False)
        self.table = publish_start_up_table(config, table_dir)
        self.group = EngineGroup.join(
            options.dist_init, config.rank, config.ranks, self.device, options.dist_timeout_seconds
        )
        self.moe = MoeStep(self.table, self.group, options.dispatch_block)
        for layer, block in enumerate(moe_blocks(model)):
            block.experts = ExpertParallelExperts(layer, self.moe, block.experts.act_fn)
        self.model = nn.Module.to(model, self.device)
        self.steps = 0
        self.tokens_served = 0
        self._placement: torch.Tensor | None = None
        self._probes: queue.SimpleQueue[_PendingProbe] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._stopped = False  # the group agreed to stop: no more rounds

    # -- serving -------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Serve rounds until ``stop`` is set here or the group agreed to stop."""
        self._stop = stop
        try:
            serve_paced(self.step, lambda: self.workload, stop)
            if not self._stopped:  # tell the others, or they would wait for us forever
                self._agree(None, None, stopping=True)
                self._stopped = True
        except Exception as error:  # a peer died: this group cannot serve any more
            log.exception("engine group failed; stopping")
            self._stopped = True
            self._fail_probes(f"engine group failed: {error}")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        finally:
            self.group.close()
        self._fail_probes("engine stopped")

    def step(self, tokens: int | None = None) -> None:
        """One round of the group (see the module docstring); ``tokens`` counts on rank 0."""
        if self._stopped:
            return
        probe = self._take_probe()
        waiting_since = time.monotonic()
        warned = False
        while True:
            with self.table.engine_step():
                plan = self._agree(tokens, probe, stopping=False)
                if plan.stop:
                    self._stopped = True
                    self._stop.set()
                    if probe is not None:
                        self._probes.put(probe)  # answered by _fail_probes
                    return
                missing = placement_error(
                    plan.placement, self.table.layout.num_slots, self.config.experts
                )
                if missing is None:
                    self._serve_round(plan, probe)
                    return
            if not warned and time.monotonic() - waiting_since > _WARN_AFTER_SECONDS:
                log.warning("waiting for a commit on another pod: %s", missing)
                warned = True
            time.sleep(_RETRY_SECONDS)

    def forward(self, input_ids: torch.Tensor, count: bool) -> torch.Tensor:
        """``[B·s, V]`` logits of ``input_ids [B, s]`` (call inside a round: a collective)."""
        self.moe.count = count
        with torch.inference_mode():
            output = self.model(input_ids=input_ids.to(self.device), use_cache=False)
        logits: torch.Tensor = output.logits
        return logits.reshape(-1, logits.shape[-1])

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B·s, V]`` logits of ``input_ids [B, s]`` from an engine that is a group of one
        rank, in the caller's thread (tests and benchmarks replay with it); not counted."""
        if self.group.size > 1:
            raise RuntimeError("an engine of several ranks computes only in group rounds")
        with self.table.engine_step():
            self._use_placement(self.table.routing.clone())
            return self.forward(input_ids, count=False)

    def set_workload(self, workload: Workload) -> None:
        self.workload = workload

    # -- probe ---------------------------------------------------------------------------
    def probe(self, request: ProbeRequest) -> LogitsProbe:
        """The logits of a fixed prompt, computed by the whole group at its next step."""
        if self._stopped:
            raise RuntimeError("engine stopped")
        pending = _PendingProbe(request)
        self._probes.put(pending)
        if not pending.done.wait(_PROBE_TIMEOUT_SECONDS):
            raise TimeoutError(f"no step served the probe within {_PROBE_TIMEOUT_SECONDS:g} s")
        if pending.answer is None:
            raise RuntimeError(pending.error)
        return pending.answer

    # -- internals -----------------------------------------------------------------------
    def _agree(self, tokens: int | None, probe: _PendingProbe | None, stopping: bool) -> _Plan:
        workload = self.workload
        skew_bits = struct.unpack("<q", struct.pack("<d", workload.skew))[0]
        header = [
            int(stopping),
            tokens or workload.tokens_per_step,
            workload.shift,
            skew_bits,
            probe.request.tokens if probe else 0,
            probe.request.seed if probe else 0,
        ]
        row = torch.cat(
            [torch.tensor(header, dtype=torch.int64), self.table.local_placement().reshape(-1)]
        )
        rows = self.group.gather_rows(row)
        return _Plan.of(rows, self.config.layers, self.config.slots_per_rank)

    def _serve_round(self, plan: _Plan, probe: _PendingProbe | None) -> None:
        self._use_placement(plan.placement)
        for rank, request in plan.probes:
            logits = self.forward(probe_prompt(request.tokens, request.seed, VOCAB), count=False)
            if rank == self.config.rank and probe is not None:
                revisions = self.table.revisions.tolist()
                probe.answer = LogitsProbe.of(rank, self.config.group, revisions, logits)
                probe.done.set()
        batch = workload_batch(
            plan.tokens, plan.skew, plan.shift, self.config.seed, self.steps, VOCAB
        )
        self.forward(batch, count=True)
        self.steps += 1
        self.tokens_served += batch.numel()

    def _use_placement(self, placement: torch.Tensor) -> None:
        """Rebuild the kernels' ``log2phy``/replica counts when the group's slots changed."""
        if self._placement is not None and torch.equal(self._placement, placement):
            return
        routes = []
        for row in placement:
            log2phy, counts = replica_table(row.clone(), self.config.experts)
            routes.append(LayerRoutes(log2phy.to(self.device), counts.to(self.device)))
        self.moe.routes = routes
        self._placement = placement.clone()

    def _take_probe(self) -> _PendingProbe | None:
        try:
            return self._probes.get_nowait()
        except queue.Empty:
            return None

    def _fail_probes(self, reason: str) -> None:
        while (pending := self._take_probe()) is not None:
            pending.error = reason
            pending.done.set()
