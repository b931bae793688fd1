"""Per-layer gate: has a layer's load changed enough since its placement was computed?

xLLM-style: compare the layer's new load with the load its current placement was computed
from, as cosine similarity of the two per-expert load vectors (1.0: same distribution,
whatever the token volume).  Below the threshold the layer is a candidate for a new
placement; at or above it, the layer keeps its placement without further work.
"""

from __future__ import annotations

import numpy as np

from eplb_core.arrays import FloatArray


def load_similarity(load: FloatArray, reference: FloatArray) -> FloatArray:
    """``[L]`` float64 cosine similarity of ``load`` and ``reference`` (both ``[L, E]``).

    A layer with no tokens in either window counts as unchanged (1.0) if both are empty,
    changed (0.0) if only one is.
    """
    a, b = load.astype(np.float64), reference.astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_empty = (norm_a == 0) & (norm_b == 0)
    cosine = (a * b).sum(axis=1) / np.maximum(norm_a * norm_b, np.finfo(np.float64).tiny)
    return np.where(both_empty, 1.0, cosine)
