"""Synthetic expert loads: Zipf-skewed per layer, drifting over time windows.

Real routing is skewed (a few hot experts per layer, different ones in each layer) and
drifts as traffic changes.  These generators give tests, benchmarks and the shipped example
stats loads of that shape, reproducibly from a seed.

Run ``python -m eplb_operator.workloads --help`` to write a stats file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def zipf_load(
    num_layers: int, num_experts: int, exponent: float = 0.8, tokens: int = 100_000, seed: int = 0
) -> torch.Tensor:
    """``[L, E]`` float64 token counts: per layer, Zipf(``exponent``) over a random expert order."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_experts + 1) ** exponent
    rows = [rng.permutation(weights) for _ in range(num_layers)]
    load = np.stack(rows) / weights.sum() * tokens
    return torch.from_numpy(np.round(load))


def drift(load: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    """``load`` ``[L, E]`` times per-expert lognormal noise of ``sigma`` (the drift level)."""
    rng = np.random.default_rng(seed)
    noise = rng.lognormal(0.0, sigma, size=tuple(load.shape))
    return torch.from_numpy(np.round(load.double().numpy() * noise))


def drifting_windows(
    num_windows: int,
    num_layers: int,
    num_experts: int,
    sigma: float = 0.05,
    exponent: float = 0.8,
    tokens: int = 100_000,
    seed: int = 0,
) -> torch.Tensor:
    """``[T, L, E]``: a Zipf base load that drifts by ``sigma`` from each window to the next."""
    current = zipf_load(num_layers, num_experts, exponent, tokens, seed)
    windows = []
    for window in range(num_windows):
        windows.append(current)
        current = drift(current, sigma, seed + 1 + window).clamp(min=0)
    return torch.stack(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write synthetic expert-load stats (eplb JSON).")
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--experts", type=int, required=True)
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--exponent", type=float, default=0.8)
    parser.add_argument("--sigma", type=float, default=0.05)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    windows = drifting_windows(
        args.windows, args.layers, args.experts, args.sigma, args.exponent, args.tokens, args.seed
    )
    document = {
        "model": args.model,
        "source": {
            "generator": "eplb_operator.workloads",
            "exponent": args.exponent,
            "sigma": args.sigma,
            "seed": args.seed,
        },
        "num_layers": args.layers,
        "num_experts": args.experts,
        "windows": windows.long().tolist(),
    }
    args.output.write_text(json.dumps(document, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
