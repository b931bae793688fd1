"""Per-layer gate: has a layer's load changed enough since its placement was computed?

xLLM-style: compare the layer's new load with the load its current placement was computed
from, as cosine similarity of the two per-expert load vectors (1.0: same distribution,
whatever the token volume).  Below the threshold the layer is a candidate for a new
placement; at or above it, the layer keeps its placement without further work.
"""

from __future__ import annotations

import torch


def load_similarity(load: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``[L]`` float64 cosine similarity of ``load`` and ``reference`` (both ``[L, E]``).

    A layer with no tokens in either window counts as unchanged (1.0) if both are empty,
    changed (0.0) if only one is.
    """
    a, b = load.double(), reference.double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    both_empty = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    cosine = (a * b).sum(dim=1) / norms.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(both_empty, torch.ones_like(cosine), cosine)
