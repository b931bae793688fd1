"""Probe outputs: the MoE output for fixed inputs, computed by all ranks together.

Each rank computes the (token, choice) pairs routed to its own slots, one token at a time
(the same kernel shape for every pair, so a pair's bits do not depend on which rank or slot
computes it), and returns them as a :class:`ProbePart`.  :func:`merge_probe_parts` checks
that every pair was computed exactly once and sums the pairs in a fixed order: the result
is bit-identical for any placement that holds the right weights.
"""

from __future__ import annotations

import base64

import torch
from pydantic import BaseModel, ConfigDict, Field


class ProbeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(default=16, ge=1, le=4096)
    seed: int = 12345


class ProbeLayer(BaseModel):
    """The pairs of one layer that this rank computed.

    ``pairs`` ``[n, 2]`` (token, choice); ``gates`` ``[n]``; ``outputs`` ``[n, H]`` float32
    as base64 of little-endian bytes (exact: JSON numbers would round).
    """

    layer: int
    pairs: list[tuple[int, int]]
    gates: list[float]
    outputs: str

    @staticmethod
    def encode(tensor: torch.Tensor) -> str:
        return base64.b64encode(tensor.float().contiguous().numpy().tobytes()).decode()

    def decoded_outputs(self, hidden: int) -> torch.Tensor:
        raw = bytearray(base64.b64decode(self.outputs))
        return torch.frombuffer(raw, dtype=torch.float32).view(len(self.pairs), hidden)


class ProbePart(BaseModel):
    rank: int
    group: str
    tokens: int
    top_k: int
    hidden: int
    layers: list[ProbeLayer]


class ProbeMismatchError(ValueError):
    """The parts do not cover every (token, choice) exactly once: ranks disagree on routing."""


def merge_probe_parts(parts: list[ProbePart]) -> torch.Tensor:
    """``[L, T, H]`` float32 MoE outputs from every rank's part."""
    if not parts:
        raise ProbeMismatchError("no probe parts")
    first = parts[0]
    num_layers = len(first.layers)
    T, k, H = first.tokens, first.top_k, first.hidden
    values = torch.zeros(num_layers, T, k, H)
    gates = torch.zeros(num_layers, T, k)
    seen = torch.zeros(num_layers, T, k, dtype=torch.int64)
    for part in parts:
        if (part.tokens, part.top_k, part.hidden, len(part.layers)) != (T, k, H, num_layers):
            raise ProbeMismatchError(f"rank {part.rank} probed a different shape")
        for index, layer in enumerate(part.layers):
            if not layer.pairs:
                continue
            pairs = torch.tensor(layer.pairs, dtype=torch.int64)
            values[index, pairs[:, 0], pairs[:, 1]] = layer.decoded_outputs(H)
            gates[index, pairs[:, 0], pairs[:, 1]] = torch.tensor(layer.gates)
            seen[index, pairs[:, 0], pairs[:, 1]] += 1
    if not bool((seen == 1).all()):
        row, token, choice = (int(v) for v in (seen != 1).nonzero()[0])
        raise ProbeMismatchError(
            f"layer {first.layers[row].layer}, token {token}, choice {choice} was computed "
            f"{int(seen[row, token, choice])} times (expected once)"
        )
    out = torch.zeros(num_layers, T, H)
    for choice in range(k):  # fixed order: the sum's bits do not depend on the parts' order
        out += gates[:, :, choice, None] * values[:, :, choice]
    return out
