"""The expert tables of one pod's local ranks, seen as one member of its EP group.

A pod of ``K`` GPUs is ``K`` EP ranks: engine process ``k`` publishes its table in
``TABLE_DIR/local-k`` (``TABLE_DIR`` itself when ``K`` is 1), and the pod hosts the block
of ranks ``[i*K, (i+1)*K)``, ``i`` its index in the group.  Slots are rank-major, so that
block is one contiguous run of ``K*S`` slots: to the shuffle executor, the pod is one
"rank" of ``K*S`` slots in a group of ``R/K`` pods (:attr:`PodTables.layout`).  Its moves
between local GPUs are then local slot copies (device copies), and only experts that cross
pods go through the peer transfer — the same planner, one code path for every ``K``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from eplb_sidecar.contract.layout import TableLayout
from eplb_sidecar.contract.table import ExpertTable, commit_window

LOCAL_DIR_PREFIX = "local-"


def local_table_dirs(table_dir: Path, ranks_per_pod: int) -> list[Path]:
    """Where each local rank's table lives: ``table_dir`` for one rank per pod (as engines
    with one GPU per pod publish it), else ``table_dir/local-0 … local-(K-1)``."""
    if ranks_per_pod == 1:
        return [table_dir]
    return [table_dir / f"{LOCAL_DIR_PREFIX}{k}" for k in range(ranks_per_pod)]


class LayoutMismatchError(ValueError):
    """The local tables do not make one block of ranks of one EP group."""


class PodSlots:
    """One weight tensor over the pod's ``K*S`` slots: ``[layer, slot]`` → the view of that
    slot in its local rank's table (``[*spec.shape]``, on that rank's device)."""

    def __init__(self, tensors: list[torch.Tensor], slots_per_rank: int) -> None:
        self._tensors = tensors  # per local rank: [L, S, *shape]
        self._slots_per_rank = slots_per_rank

    def __getitem__(self, index: tuple[int, int]) -> torch.Tensor:
        layer, slot = index
        local, offset = divmod(slot, self._slots_per_rank)
        return self._tensors[local][layer, offset]


class PodTables:
    """The tables of a pod's local ranks (``tables[k]`` is local rank ``k``).

    Attributes:
        layout: the pod as one member of its group: ``rank`` = the pod's index ``i``,
            ``ranks`` = pods in the group ``R/K``, ``slots_per_rank`` = ``K*S``.
        rank_layout: what each local table says (``rank`` = its first EP rank ``i*K``).
        weights: name → :class:`PodSlots` over the pod's ``K*S`` slots.
        routing: ``[L, P]`` ``phy2log`` (every local table holds the same; read from the first).
        revisions: ``[L]`` served revision per layer (the same in every local table).
    """

    def __init__(self, tables: list[ExpertTable]) -> None:
        if not tables:
            raise LayoutMismatchError("a pod has at least one local table")
        first = tables[0].layout
        K = len(tables)
        shape = first.model_dump(exclude={"rank", "device", "transport"})
        for k, table in enumerate(tables):
            layout = table.layout
            if layout.model_dump(exclude={"rank", "device", "transport"}) != shape:
                raise LayoutMismatchError(
                    f"local table {k} ({table.directory}) has another shape or group than "
                    f"local table 0 ({tables[0].directory})"
                )
            if layout.rank != first.rank + k:
                raise LayoutMismatchError(
                    f"local table {k} ({table.directory}) is rank {layout.rank}; a pod hosts "
                    f"consecutive ranks, {first.rank + k} expected"
                )
        if first.rank % K or first.ranks % K:
            raise LayoutMismatchError(
                f"{K} ranks per pod starting at rank {first.rank} is not a block of the "
                f"group's {first.ranks} ranks"
            )
        self.tables = tables
        self.rank_layout = first
        self.ranks_per_pod = K
        self.layout = TableLayout(
            group=first.group,
            rank=first.rank // K,
            ranks=first.ranks // K,
            layers=first.layers,
            experts=first.experts,
            slots_per_rank=K * first.slots_per_rank,
            weights=first.weights,
            transport=first.transport,
            device=first.device,
        )
        S = first.slots_per_rank
        self.weights: dict[str, PodSlots] = {
            spec.name: PodSlots([t.weights[spec.name] for t in tables], S) for spec in first.weights
        }
        self.routing = tables[0].routing
        self.revisions = tables[0].revisions

    @classmethod
    def attach(cls, table_dir: Path, ranks_per_pod: int, timeout: float = 0.0) -> PodTables:
        """Open the tables the pod's engines published (waiting up to ``timeout`` s)."""
        return cls(
            [ExpertTable.attach(d, timeout) for d in local_table_dirs(table_dir, ranks_per_pod)]
        )

    @property
    def devices(self) -> list[torch.device]:
        """The local ranks' devices, each once."""
        return list(dict.fromkeys(torch.device(t.layout.device) for t in self.tables))

    def counter_base(self, layer: int) -> torch.Tensor:
        """``[K*S]``: counter value at each pod slot's last change (a copy)."""
        return torch.cat([t.counter_base[layer] for t in self.tables])

    def flip(self, layer: int, phy2log: torch.Tensor, revision: int, changed: list[int]) -> None:
        """Make ``phy2log`` ``[P]`` the routing of ``layer`` on every local rank; ``changed``:
        pod slots whose expert changed (their counters start again).  Engines held."""
        S = self.rank_layout.slots_per_rank
        for k, table in enumerate(self.tables):
            mine = [slot - k * S for slot in changed if k * S <= slot < (k + 1) * S]
            if mine:
                table.counter_base[layer, mine] = table.counters[layer, mine]
            table.routing[layer] = phy2log
            table.revisions[layer] = revision

    def restore(
        self, layer: int, counter_base: torch.Tensor, phy2log: torch.Tensor, revision: int
    ) -> None:
        """Undo :meth:`flip`: ``counter_base`` ``[K*S]`` as :meth:`counter_base` read it."""
        S = self.rank_layout.slots_per_rank
        for k, table in enumerate(self.tables):
            table.counter_base[layer] = counter_base[k * S : (k + 1) * S]
            table.routing[layer] = phy2log
            table.revisions[layer] = revision

    @contextmanager
    def commit_window(self, timeout: float) -> Iterator[None]:
        """Every local engine held at its step boundary (see :func:`commit_window`)."""
        with commit_window(self.tables, timeout):
            yield
