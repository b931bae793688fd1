"""The manifest an engine writes next to its expert table: shapes, dtypes, where weights live."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch

MANIFEST_NAME = "manifest.json"

# Bytes per element of each dtype a table may hold, by torch's name for it.  Names, not torch
# dtypes: validating a layout (the demo's flags, the CLI's) need not import torch.
DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "float8_e4m3fn": 1,
    "int8": 1,
}
FLOAT_DTYPES = frozenset({"float32", "bfloat16", "float16", "float8_e4m3fn"})


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a name of :data:`DTYPE_BYTES`."""
    import torch

    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype) and dtype.itemsize == DTYPE_BYTES[name], name
    return dtype


class WeightSpec(BaseModel):
    """One weight tensor of an expert, e.g. vLLM's ``w13_weight`` row ``[2I, H]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.]+$")
    shape: tuple[int, ...] = Field(description="Shape of one expert's tensor (no layer/slot dims).")
    dtype: str

    @model_validator(mode="after")
    def _known_dtype(self) -> WeightSpec:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPE_BYTES)}")
        if any(size <= 0 for size in self.shape):
            raise ValueError(f"shape {self.shape} has a non-positive size")
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


class TableLayout(BaseModel):
    """What one engine process (one EP rank) shares.

    Slots are rank-major: this rank owns global slots ``rank*S … rank*S+S-1`` of
    ``P = ranks*S``.  ``weights`` live in shared-memory files (``transport="shm"``) or in
    the engine's GPU memory, shared through CUDA IPC handles (``transport="cuda-ipc"``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    group: str = Field(default="0", description="EP group (serving replica) this rank belongs to.")
    rank: int = Field(ge=0)
    ranks: int = Field(ge=1)
    layers: int = Field(ge=1)
    experts: int = Field(ge=1)
    slots_per_rank: int = Field(ge=1)
    weights: tuple[WeightSpec, ...] = Field(min_length=1)
    transport: Literal["shm", "cuda-ipc"] = "shm"
    device: str = "cpu"

    @model_validator(mode="after")
    def _consistent(self) -> TableLayout:
        if self.rank >= self.ranks:
            raise ValueError(f"rank {self.rank} is outside [0, {self.ranks})")
        if self.num_slots < self.experts:
            raise ValueError(
                f"{self.ranks} ranks x {self.slots_per_rank} slots = {self.num_slots} slots "
                f"cannot hold {self.experts} experts"
            )
        names = [w.name for w in self.weights]
        if len(set(names)) != len(names):
            raise ValueError(f"weight names repeat: {names}")
        if (self.transport == "cuda-ipc") != self.device.startswith("cuda"):
            raise ValueError(f"transport {self.transport} does not fit device {self.device}")
        return self

    @property
    def num_slots(self) -> int:
        """``P``: physical slots of the whole EP group."""
        return self.ranks * self.slots_per_rank

    @property
    def first_slot(self) -> int:
        return self.rank * self.slots_per_rank

    @property
    def expert_nbytes(self) -> int:
        """Bytes of one expert over all its weight tensors."""
        return sum(w.nbytes for w in self.weights)
