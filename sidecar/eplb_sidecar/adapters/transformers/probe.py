"""The adapter's probe answer: the model's logits for fixed prompts, exact.

Every rank computes the whole forward (the ranks exchange expert outputs per layer), so any
rank's answer is the group's logits; :func:`merge_logits` checks that the ranks agree.
Kept apart from :mod:`.engine` so that readers need not import ``transformers``.
"""

from __future__ import annotations

import base64

import torch
from pydantic import BaseModel

from eplb_sidecar.engine.probe import ProbeMismatchError


class LogitsProbe(BaseModel):
    """``logits`` ``[tokens, vocab]`` float32, base64 of little-endian bytes (JSON numbers
    would round)."""

    rank: int
    group: str
    tokens: int
    vocab: int
    revisions: list[int]
    logits: str

    @classmethod
    def of(cls, rank: int, group: str, revisions: list[int], logits: torch.Tensor) -> LogitsProbe:
        values = logits.float().cpu().contiguous()
        return cls(
            rank=rank,
            group=group,
            tokens=values.shape[0],
            vocab=values.shape[1],
            revisions=revisions,
            logits=base64.b64encode(values.numpy().tobytes()).decode(),
        )

    def decoded(self) -> torch.Tensor:
        raw = bytearray(base64.b64decode(self.logits))
        return torch.frombuffer(raw, dtype=torch.float32).view(self.tokens, self.vocab)


def merge_logits(probes: list[LogitsProbe]) -> torch.Tensor:
    """``[tokens, vocab]``: the group's logits, after checking every rank computed the same."""
    if not probes:
        raise ProbeMismatchError("no probe answers")
    logits = probes[0].decoded()
    for probe in probes[1:]:
        # Revisions may differ (pods commit one after the other); the logits may not.
        if not torch.equal(probe.decoded(), logits):
            raise ProbeMismatchError(
                f"rank {probe.rank} computed other logits than rank {probes[0].rank}"
            )
    return logits
