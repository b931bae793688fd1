"""Where physical expert slots live: ranks, nodes, and the model's expert groups."""

from __future__ import annotations

from dataclasses import dataclass

from eplb_core.errors import InvalidInputError


@dataclass(frozen=True)
class Topology:
    """Shape of one expert-parallel group.

    Slots are rank-major: rank ``r`` owns slots ``r*S … r*S+S-1``; nodes own consecutive
    ranks.  ``num_groups`` is the model's expert groups (DeepSeek's node-limited routing):
    hierarchical placement keeps every group, and all replicas of its experts, on one node.
    Groups that do not split evenly (over the nodes, or the experts over the groups) leave
    only global placement, as in vLLM.
    """

    num_experts: int
    num_ranks: int
    slots_per_rank: int
    num_nodes: int = 1
    num_groups: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.num_experts >= 1, f"experts must be >= 1, got {self.num_experts}"),
            (self.num_ranks >= 1, f"ranks must be >= 1, got {self.num_ranks}"),
            (self.slots_per_rank >= 1, f"slots per rank must be >= 1, got {self.slots_per_rank}"),
            (self.num_nodes >= 1, f"nodes must be >= 1, got {self.num_nodes}"),
            (self.num_groups >= 1, f"groups must be >= 1, got {self.num_groups}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)
        if self.num_slots < self.num_experts:
            raise InvalidInputError(
                f"{self.num_slots} slots ({self.num_ranks} ranks x {self.slots_per_rank}) "
                f"cannot hold {self.num_experts} experts: every expert needs a replica"
            )
        if self.num_ranks % self.num_nodes:
            raise InvalidInputError(
                f"nodes ({self.num_nodes}) must divide ranks ({self.num_ranks})"
            )

    @classmethod
    def from_redundant(
        cls,
        num_experts: int,
        num_ranks: int,
        num_redundant: int,
        num_nodes: int = 1,
        num_groups: int = 1,
    ) -> Topology:
        """Topology with ``num_experts + num_redundant`` slots spread evenly over the ranks."""
        if num_redundant < 0:
            raise InvalidInputError(f"redundant experts must be >= 0, got {num_redundant}")
        if num_ranks < 1:
            raise InvalidInputError(f"ranks must be >= 1, got {num_ranks}")
        num_slots = num_experts + num_redundant
        if num_slots % num_ranks:
            raise InvalidInputError(
                f"physical slots ({num_experts} experts + {num_redundant} redundant = "
                f"{num_slots}) must be a multiple of ranks ({num_ranks})"
            )
        return cls(num_experts, num_ranks, num_slots // num_ranks, num_nodes, num_groups)

    @property
    def num_slots(self) -> int:
        """P, physical slots in the whole group."""
        return self.num_ranks * self.slots_per_rank

    @property
    def num_redundant(self) -> int:
        return self.num_slots - self.num_experts

    @property
    def ranks_per_node(self) -> int:
        return self.num_ranks // self.num_nodes

    @property
    def hierarchical_possible(self) -> bool:
        """Groups can be packed whole onto nodes: nodes divide groups (vLLM's and DeepSeek's
        condition), and groups divide experts."""
        return self.num_groups % self.num_nodes == 0 and self.num_experts % self.num_groups == 0
