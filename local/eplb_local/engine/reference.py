"""The reference MoE engine: serves token batches through real expert FFNs on its own slots.

Each rank draws batches of the group's tokens, routes every token with the gate, counts the
tokens that land on its own slots (what it would receive in EP's all-to-all) and runs them
through the expert weights of those slots.  It implements the engine contract: counters,
routing table and weights live in an :class:`ExpertTable`; each step holds the step lock
and re-reads the routing table when a commit landed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch.nn import functional

from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.probe import ProbeLayer, ProbePart, ProbeRequest
from eplb_sidecar.engine.routing import choose_slots, gate, popularity_bias, replica_table
from eplb_sidecar.engine.serving import serve_paced
from eplb_sidecar.engine.startup import publish_start_up_table
from eplb_sidecar.engine.weights import router_weights


def expert_ffn(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU expert: ``x`` ``[n, H]``, ``w13`` ``[2I, H]``, ``w2`` ``[H, I]`` → ``[n, H]``."""
    gate_up = x.to(w13.dtype) @ w13.T
    gate_half, up = gate_up.chunk(2, dim=-1)
    return (functional.silu(gate_half) * up) @ w2.T


class ReferenceEngine:
    """One EP rank of the reference model, publishing its table in ``table_dir``."""

    def __init__(self, config: EngineConfig, table_dir: Path) -> None:
        self.config = config
        self.workload = config.workload
        self.device = torch.device(config.device)
        self.table = publish_start_up_table(config, table_dir)
        self.routers = torch.stack(
            [
                router_weights(config.hidden, config.experts, config.seed, layer)
                for layer in range(config.layers)
            ]
        ).to(self.device)
        self.steps = 0
        self.tokens_served = 0
        self._bias_key: tuple[float, int] | None = None
        self._bias = torch.empty(0)
        self._routes: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- serving -------------------------------------------------------------------------
    def step(self, tokens: int | None = None) -> None:
        """Serve one batch of ``tokens`` (default ``workload.tokens_per_step``) tokens
        through every layer."""
        config, workload = self.config, self.workload
        T, S, R = tokens or workload.tokens_per_step, config.slots_per_rank, config.ranks
        generator = torch.Generator().manual_seed(
            (config.seed * 65_537 + config.rank) * 1_000_003 + self.steps
        )
        x = torch.randn(T, config.hidden, generator=generator).to(self.device)
        token_ids = torch.arange(T, device=self.device) + self.steps * T
        with self.table.engine_step() as changed:
            if changed:
                self._refresh_routes()
            bias = self._popularity()
            first = config.rank * S
            for layer in range(config.layers):
                experts, _ = gate(x, self.routers[layer], bias[layer], config.top_k)
                slots = choose_slots(experts, token_ids, *self._routes[layer])
                ranks_hit = torch.bincount((slots // S).flatten(), minlength=R).cpu()
                self.table.group_load[layer] += ranks_hit
                local = slots - first
                mine = (local >= 0) & (local < S)
                self.table.counters[layer] += torch.bincount(local[mine], minlength=S).cpu()
                token_index = mine.nonzero()[:, 0]
                for slot in torch.unique(local[mine]).tolist():
                    rows = token_index[local[mine] == slot]
                    expert_ffn(
                        x[rows],
                        self.table.weights["w13"][layer, slot],
                        self.table.weights["w2"][layer, slot],
                    )
        self.steps += 1
        self.tokens_served += T

    def serve(self, stop: threading.Event) -> None:
        """Serve steps until ``stop`` is set (the engine's main loop)."""
        serve_paced(self.step, lambda: self.workload, stop)

    def set_workload(self, workload: Workload) -> None:
        self.workload = workload

    # -- probe ---------------------------------------------------------------------------
    def probe(self, request: ProbeRequest) -> ProbePart:
        """This rank's share of the MoE outputs for fixed inputs (see :mod:`.probe`)."""
        config = self.config
        S = config.slots_per_rank
        generator = torch.Generator().manual_seed(request.seed)
        x = torch.randn(request.tokens, config.hidden, generator=generator).to(self.device)
        token_ids = torch.arange(request.tokens, device=self.device)
        layers: list[ProbeLayer] = []
        with self.table.engine_step() as changed:
            if changed:
                self._refresh_routes()
            bias = self._popularity()
            for layer in range(config.layers):
                experts, gates = gate(x, self.routers[layer], bias[layer], config.top_k)
                local = choose_slots(experts, token_ids, *self._routes[layer]) - config.rank * S
                pairs = ((local >= 0) & (local < S)).nonzero().tolist()
                outputs = [
                    expert_ffn(
                        x[token : token + 1],
                        self.table.weights["w13"][layer, int(local[token, choice])],
                        self.table.weights["w2"][layer, int(local[token, choice])],
                    )[0]
                    for token, choice in pairs
                ]
                stacked = torch.stack(outputs).cpu() if outputs else torch.empty(0, config.hidden)
                layers.append(
                    ProbeLayer(
                        layer=layer,
                        pairs=[(t, c) for t, c in pairs],
                        gates=[float(gates[t, c]) for t, c in pairs],
                        outputs=ProbeLayer.encode(stacked),
                    )
                )
        return ProbePart(
            rank=config.rank,
            group=config.group,
            tokens=request.tokens,
            top_k=config.top_k,
            hidden=config.hidden,
            layers=layers,
        )

    # -- internals -----------------------------------------------------------------------
    def _refresh_routes(self) -> None:
        """Re-read the routing table (called under the step lock after a commit)."""
        self._routes = []
        for row in self.table.routing:
            log2phy, counts = replica_table(row.clone(), self.config.experts)
            self._routes.append((log2phy.to(self.device), counts.to(self.device)))

    def _popularity(self) -> torch.Tensor:
        key = (self.workload.skew, self.workload.shift)
        if key != self._bias_key:
            config = self.config
            self._bias = torch.stack(
                [
                    popularity_bias(config.experts, key[0], config.seed, layer, key[1])
                    for layer in range(config.layers)
                ]
            ).to(self.device)
            self._bias_key = key
        return self._bias
