"""The demo's result: what ``--json`` prints and ``summary.json`` holds."""

from __future__ import annotations

from pydantic import BaseModel, Field

from eplb_operator.report.recording import RolloutRecord


class PhaseResult(BaseModel):
    """One load pattern: the imbalance engines lived with before and after the operator acted."""

    name: str
    imbalance_before: float | None = Field(description="Mean over layers, max / mean rank load.")
    imbalance_after: float | None
    per_layer_before: list[float] = Field(default_factory=list)
    per_layer_after: list[float] = Field(default_factory=list)
    rebalanced: bool = False


class FaultResult(BaseModel):
    name: str
    injected: bool = Field(description="Whether the fault actually happened.")
    outcome: str = Field(description="How it ended, in words.")
    sidecar_restarts: int = 0
    operator_restarts: int = 0


class DemoSummary(BaseModel):
    imbalance_before: float | None = Field(description="First phase, before any rebalance.")
    imbalance_after: float | None = Field(description="Last phase, after its rebalance.")
    rebalances: int = Field(description="Rollouts completed.")
    layers_committed: int
    rollout_seconds: float = Field(description="Summed over completed rollouts.")
    moves: int = Field(description="Expert slots moved, all rollouts.")
    outputs_identical: bool = Field(
        description="The engines' outputs for fixed probe inputs equal the first ones after "
        "every rollout."
    )
    consistent: bool = Field(
        description="All pods agree on every layer, every logical expert has a replica, every "
        "slot holds its expert's weights (after every rollout and at the end)."
    )
    aborted: int = Field(description="Rollouts aborted (and retried later).")
    fault: FaultResult | None
    prometheus: bool = Field(description="A real Prometheus, or the operator's direct scrape.")
    phases: list[PhaseResult]
    rollouts: list[RolloutRecord]
    problems: list[str] = Field(default_factory=list)
    seconds: float
    ok: bool = Field(description="Every phase rebalanced, outputs identical, consistent.")
