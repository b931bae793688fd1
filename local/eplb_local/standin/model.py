"""The simulated model and workload every stand-in serves, from its ``--standin-*`` flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class StandinModel:
    """``hidden_layers`` layers, the first ``first_moe_layer`` dense, ``experts`` routed
    experts with ``top_k`` per token; ``ranks`` EP ranks of ``slots_per_rank`` slots each.
    Each step routes ``tokens_per_step`` tokens (Zipf(``skew``) popularity per layer, its hot
    experts a per-layer permutation of ``seed``), ``step_seconds`` apart."""

    hidden_layers: int
    first_moe_layer: int
    experts: int
    top_k: int
    ranks: int
    redundant: int
    tokens_per_step: int = 256
    step_seconds: float = 0.05
    skew: float = 1.2
    seed: int = 0

    @property
    def moe_layer_ids(self) -> list[int]:
        return list(range(self.first_moe_layer, self.hidden_layers))

    @property
    def slots(self) -> int:
        return self.experts + self.redundant

    @property
    def slots_per_rank(self) -> int:
        return self.slots // self.ranks

    def check(self) -> str | None:
        """Why these sizes cannot be served, or None."""
        if not 0 <= self.first_moe_layer < self.hidden_layers:
            return "--standin-first-moe-layer must be below --standin-hidden-layers"
        if min(self.experts, self.top_k, self.ranks, self.tokens_per_step) < 1:
            return "experts, top-k, EP size and tokens per step must be positive"
        if self.top_k > self.experts or self.redundant < 0 or self.slots % self.ranks:
            return (
                f"{self.experts} experts + {self.redundant} redundant must split over "
                f"{self.ranks} ranks, top-k at most the experts"
            )
        return None


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stand-in model and workload")
    group.add_argument("--standin-hidden-layers", type=int, default=6)
    group.add_argument("--standin-first-moe-layer", type=int, default=2)
    group.add_argument("--standin-experts", type=int, default=16)
    group.add_argument("--standin-top-k", type=int, default=2)
    group.add_argument("--standin-tokens-per-step", type=int, default=256)
    group.add_argument("--standin-step-seconds", type=float, default=0.05)
    group.add_argument("--standin-skew", type=float, default=1.2)
    group.add_argument("--standin-seed", type=int, default=0)


def model_from(args: argparse.Namespace, ranks: int, redundant: int) -> StandinModel:
    return StandinModel(
        hidden_layers=args.standin_hidden_layers,
        first_moe_layer=args.standin_first_moe_layer,
        experts=args.standin_experts,
        top_k=args.standin_top_k,
        ranks=ranks,
        redundant=redundant,
        tokens_per_step=args.standin_tokens_per_step,
        step_seconds=args.standin_step_seconds,
        skew=args.standin_skew,
        seed=args.standin_seed,
    )
