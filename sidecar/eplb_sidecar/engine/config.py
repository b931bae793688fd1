"""Configuration of the reference engine: model shape, workload and where it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from eplb_sidecar.contract.layout import TableLayout, WeightSpec

if TYPE_CHECKING:
    import torch


class Workload(BaseModel):
    """The token stream: Zipf-skewed expert popularity, drifted by ``shift``."""

    model_config = ConfigDict(extra="forbid")

    skew: float = Field(default=1.2, ge=0.0, le=4.0, description="Zipf exponent; 0 is uniform.")
    shift: int = Field(default=0, ge=0, description="Drift: a new popularity order per value.")
    tokens_per_step: int = Field(default=256, ge=1, le=1 << 20)
    step_interval: float = Field(
        default=0.02, ge=0.0, le=60.0, description="Seconds between steps."
    )
    tokens_per_second: int | None = Field(
        default=None,
        ge=1,
        description="Serve this many tokens per second of wall time (each step serves what "
        "accrued since the last, at most 2 seconds' worth) instead of a fixed number per step, "
        "so that ranks sharing a busy machine still see the same token rate.",
    )


class EngineConfig(BaseModel):
    """One EP rank of the reference model.

    Every expert is a SwiGLU FFN: ``w13`` ``[2I, H]`` (gate and up, as vLLM's FusedMoE
    stores them) and ``w2`` ``[H, I]``.
    """

    model_config = ConfigDict(extra="forbid")

    group: str = "0"
    rank: int = Field(default=0, ge=0)
    ranks: int = Field(default=4, ge=1)
    layers: int = Field(default=4, ge=1)
    experts: int = Field(default=16, ge=1)
    slots_per_rank: int = Field(default=5, ge=1)
    hidden: int = Field(default=64, ge=1)
    intermediate: int = Field(default=32, ge=1)
    top_k: int = Field(default=2, ge=1)
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    workload: Workload = Field(default_factory=Workload)

    def layout(self) -> TableLayout:
        return TableLayout(
            group=self.group,
            rank=self.rank,
            ranks=self.ranks,
            layers=self.layers,
            experts=self.experts,
            slots_per_rank=self.slots_per_rank,
            weights=self.weight_specs(),
            transport="cuda-ipc" if self.device.startswith("cuda") else "shm",
            device=self.device,
        )

    def weight_specs(self) -> tuple[WeightSpec, ...]:
        return (
            WeightSpec(name="w13", shape=(2 * self.intermediate, self.hidden), dtype=self.dtype),
            WeightSpec(name="w2", shape=(self.hidden, self.intermediate), dtype=self.dtype),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        return self.weight_specs()[0].torch_dtype
