"""Token ids the engine serves: fixed probe prompts and the workload's skewed batches.

Pure functions of their arguments, so every rank builds the same batch from the step's
agreed description, and a test can replay what the engines served.
"""

from __future__ import annotations

import torch

from eplb_sidecar.engine.routing import popularity_bias

SEQUENCE_TOKENS = 32  # workload batches are sequences of this many tokens


def probe_prompt(tokens: int, seed: int, vocab: int) -> torch.Tensor:
    """``[1, tokens]``: one sequence of uniform token ids drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (1, tokens), generator=generator)


def workload_batch(
    tokens: int, skew: float, shift: int, seed: int, step: int, vocab: int
) -> torch.Tensor:
    """``[B, s]`` token ids of workload step ``step``: ``s = min(tokens, 32)``,
    ``B = ceil(tokens / s)``.

    Token ids are Zipf(``skew``)-popular over an order drawn per ``shift``: the router
    sends popular tokens to the same experts, so expert load is skewed by the model's own
    routing, not by a bias we add to it.
    """
    length = min(tokens, SEQUENCE_TOKENS)
    rows = -(-tokens // length)
    popularity = popularity_bias(vocab, skew, seed, 0, shift).exp()
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    ids = torch.multinomial(popularity, rows * length, replacement=True, generator=generator)
    return ids.view(rows, length)
