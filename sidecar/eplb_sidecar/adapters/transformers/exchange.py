"""The engines' own process group: one engine process per EP rank (gloo on CPU, NCCL on GPU).

A forward needs every rank's experts, so the ranks exchange per MoE layer the way vLLM's
"naive" all2all backend does (every rank sees all tokens; expert outputs are summed over
ranks): each rank fills the rows of the pairs it computed, zeros elsewhere, and an
all-reduce sums them.  Every pair is computed by exactly one replica, so the sum adds only
exact zeros and its bits do not depend on the placement.  Separate from the sidecars'
transfer groups: engines and sidecars never share a process group.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


class EngineGroup:
    """This engine's place in its EP group; a group of one needs no process group."""

    def __init__(self, rank: int, size: int, device: torch.device) -> None:
        self.rank = rank
        self.size = size
        # NCCL moves only GPU tensors; gloo takes CPU ones.
        self.device = device if device.type == "cuda" else torch.device("cpu")

    @classmethod
    def join(
        cls,
        init_method: str | None,
        rank: int,
        size: int,
        device: torch.device,
        timeout_seconds: float,
    ) -> EngineGroup:
        """Rendezvous with the other ranks (blocks until all arrived).

        ``init_method`` is torch.distributed's: ``tcp://host:port`` across pods,
        ``file:///path`` for processes of one machine.
        """
        if size > 1:
            if init_method is None:
                raise ValueError(f"{size} ranks need a rendezvous (--dist-init)")
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                init_method=init_method,
                rank=rank,
                world_size=size,
                timeout=datetime.timedelta(seconds=timeout_seconds),
            )
        return cls(rank, size, device)

    def gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """``[size, n]`` on the CPU: every rank's ``row [n]`` (int64), in rank order."""
        if self.size == 1:
            return row.unsqueeze(0).clone()
        mine = row.to(self.device)
        rows = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(rows, mine)
        return torch.stack(rows).cpu()

    def sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over the ranks, in place."""
        if self.size > 1:
            dist.all_reduce(tensor)

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
