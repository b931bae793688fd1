"""The simulated token stream, routed through a placement.

Every rank of an EP group draws the same stream (one seed), so whichever rank records
sees the group's tokens, as an engine's all-reduce would give them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eplb_local.standin.model import StandinModel


@dataclass
class StepLoad:
    """One step: ``picks`` ``[L, T, k]`` logical experts per MoE layer and token, and
    ``slots`` ``[L, T, k]`` the physical slot each pick went to."""

    picks: np.ndarray
    slots: np.ndarray

    def logical(self, experts: int, tokens: slice = slice(None)) -> np.ndarray:
        """``[L, E]`` tokens per logical expert (of the tokens in ``tokens``)."""
        return _bincount_rows(self.picks[:, tokens], experts)

    def physical(self, slots: int, tokens: slice = slice(None)) -> np.ndarray:
        """``[L, P]`` tokens per physical slot (of the tokens in ``tokens``)."""
        return _bincount_rows(self.slots[:, tokens], slots)


class TokenRouter:
    def __init__(self, model: StandinModel, phy2log: np.ndarray) -> None:
        """``phy2log`` ``[L, P]``: the placement of the MoE layers, as loaded at start."""
        self.model = model
        self.rng = np.random.default_rng(model.seed)
        layers, experts = len(model.moe_layer_ids), model.experts
        # Per layer, the i-th most popular expert is hot[l, i], with weight 1 / (i+1)^skew.
        weights = 1.0 / np.arange(1, experts + 1) ** model.skew
        hot = np.random.default_rng(model.seed + 1).permuted(
            np.tile(np.arange(experts), (layers, 1)), axis=1
        )
        popularity = np.empty((layers, experts))
        np.put_along_axis(popularity, hot, np.tile(weights / weights.sum(), (layers, 1)), axis=1)
        self.log_popularity = np.log(popularity)  # [L, E]
        # replica_slots[l, e, i]: the i-th slot holding expert e (padded); count[l, e] replicas.
        self.count = np.zeros((layers, experts), dtype=np.int64)
        np.add.at(self.count, (np.arange(layers)[:, None], phy2log), 1)
        self.replica_slots = np.zeros((layers, experts, int(self.count.max())), dtype=np.int64)
        for layer in range(layers):
            for expert in range(experts):
                held = np.flatnonzero(phy2log[layer] == expert)
                self.replica_slots[layer, expert, : held.size] = held

    def step(self) -> StepLoad:
        """The next step's tokens: top-k experts by Gumbel-perturbed popularity (a draw
        without replacement), each token sent to its experts' replicas round robin."""
        layers, k = len(self.model.moe_layer_ids), self.model.top_k
        tokens = self.model.tokens_per_step
        noise = self.rng.gumbel(size=(layers, tokens, self.model.experts))
        scores = self.log_popularity[:, None, :] + noise
        picks = np.argpartition(-scores, k - 1, axis=2)[:, :, :k]  # [L, T, k]
        layer_index = np.arange(layers)[:, None, None]
        replicas = self.count[layer_index, picks]
        turn = np.arange(tokens)[None, :, None] % replicas
        slots = self.replica_slots[layer_index, picks, turn]
        return StepLoad(picks, slots)


def _bincount_rows(values: np.ndarray, width: int) -> np.ndarray:
    """``[L, width]`` counts of the ids in each row of ``values`` ``[L, ...]``."""
    layers = values.shape[0]
    flat = values.reshape(layers, -1) + np.arange(layers)[:, None] * width
    return np.bincount(flat.ravel(), minlength=layers * width).reshape(layers, width)
