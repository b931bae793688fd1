"""A placement as files carry it: rows, the engine layer id of each row, and its context."""

from __future__ import annotations

from dataclasses import dataclass

from eplb_core.arrays import FloatArray, IntArray, to_numpy
from eplb_core.errors import InvalidInputError
from eplb_core.formats.layers import span


@dataclass(frozen=True)
class PlacementDocument:
    """A model's placement ``phy2log`` ``[L, P]`` and what is known about where it came from.

    ``layer_ids`` ``[L]`` names each row's engine layer.  SGLang's map has a row for every
    hidden layer (``rows_are_hidden_layers``: dense rows included, ids 0..L-1).  ``windows``
    ``[T, L, E]`` is the load the placement was planned from (written into vLLM stats).
    Entries of -1 mark unused slots (vLLM's elastic EP); readers pass them on unchanged.
    """

    phy2log: IntArray
    layer_ids: list[int]
    model: str | None = None
    num_experts: int | None = None
    num_ranks: int | None = None
    slots_per_rank: int | None = None
    num_groups: int | None = None
    num_nodes: int | None = None
    hidden_layers: int | None = None
    rows_are_hidden_layers: bool = False
    layer_updates_per_iter: int = 0  # TensorRT-LLM's online balancer: 0 keeps the placement
    windows: FloatArray | None = None
    steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # numpy, whatever the caller held (a torch tensor from the operator's revisions).
        object.__setattr__(self, "phy2log", to_numpy(self.phy2log))
        if self.windows is not None:
            object.__setattr__(self, "windows", to_numpy(self.windows))

    @property
    def experts_named(self) -> int:
        """E: the experts the document says it places (its largest id + 1 when it does not)."""
        if self.num_experts is not None:
            return self.num_experts
        return int(self.phy2log.max()) + 1 if self.phy2log.size else 0

    def rows_for(self, layer_ids: list[int], what: str) -> IntArray:
        """``[len(layer_ids), P]``: the rows of these engine layers (``what`` names the
        document in errors)."""
        rows = self.phy2log.shape[0]
        if self.rows_are_hidden_layers:
            beyond = [i for i in layer_ids if i >= rows]
            if beyond:
                raise InvalidInputError(
                    f"{what} has {rows} rows, one per hidden layer, but the stats name layer "
                    f"{beyond[0]} (SGLang indexes its map by hidden layer)"
                )
            return self.phy2log[layer_ids]
        if self.layer_ids != layer_ids:
            missing = sorted(set(layer_ids) - set(self.layer_ids))
            extra = sorted(set(self.layer_ids) - set(layer_ids))
            detail = "; ".join(
                part
                for part in (
                    f"lacks layers {span(missing)}" if missing else "",
                    f"has layers {span(extra)} the stats lack" if extra else "",
                )
                if part
            )
            raise InvalidInputError(
                f"{what} covers layers {span(self.layer_ids)}, the stats {span(layer_ids)}"
                + (f": it {detail}" if detail else "")
            )
        return self.phy2log
