"""The sidecar's control API models: the contract the operator programs against.

``GET /v1/info`` → :class:`Info`; ``POST /v1/prepare`` :class:`PrepareRequest`;
``POST /v1/commit`` :class:`CommitRequest`; ``POST /v1/abort`` :class:`AbortRequest`;
each answers :class:`Result` or, on refusal, :class:`Problem` with an HTTP status (400 bad
input, 401 unauthenticated, 409 out of order, 503 a peer or the engine did not answer).
Calls are idempotent by (revision, layer).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/v1"


class TransferGroup(BaseModel):
    """Who takes part in peer transfers for this prepare (the operator decides).

    Every participant receives the same object.  ``session`` names one process-group
    incarnation: the operator changes it whenever membership changes or a prepare failed, so
    a broken group is never reused.  ``store`` is ``host:port`` of the rendezvous store,
    served by the sidecar of the lowest participating rank on its transfer port.
    """

    model_config = ConfigDict(extra="forbid")

    session: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/-]+$")
    store: str = Field(pattern=r"^[^:\s]+:\d{1,5}$")
    ranks: list[int] = Field(min_length=1, description="Participating ranks, ascending.")


class PrepareRequest(BaseModel):
    """Stage a new placement of some layers; nothing the engine reads changes."""

    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=1, description="Placement revision; increases per layer.")
    layers: dict[int, list[int]] = Field(
        min_length=1, description="layer → phy2log of every slot of the EP group, [P]."
    )
    transfer: TransferGroup | None = Field(
        default=None, description="Peers to fetch from; None: only local slots and checkpoint."
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)


class CommitRequest(BaseModel):
    """Make staged layers live at the engine's next step boundary."""

    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=1)
    layers: list[int] = Field(min_length=1)
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)


class AbortRequest(BaseModel):
    """Drop what is staged for ``layers`` (all layers when omitted)."""

    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=1)
    layers: list[int] | None = None


class LayerResult(BaseModel):
    layer: int
    outcome: Literal[
        "staged", "already-staged", "committed", "already-committed", "aborted", "nothing-staged"
    ]
    moves: int = Field(default=0, description="Local slots whose expert changes.")
    bytes_local: int = 0
    bytes_peer: int = 0
    bytes_checkpoint: int = 0


class Result(BaseModel):
    revision: int
    layers: list[LayerResult]
    seconds: float
    transfer_seconds: float = Field(
        default=0.0, description="Of which the peer exchange (prepare only)."
    )
    stall_seconds: float = Field(
        default=0.0, description="How long the engine was held at its step boundary (commit)."
    )


class Problem(BaseModel):
    """A refused call: ``reason`` is a CamelCase word an operator can switch on."""

    reason: str
    message: str


class StagedInfo(BaseModel):
    revision: int
    layers: list[int]


class Info(BaseModel):
    pod: str
    group: str
    rank: int
    ranks: int
    layers: int
    experts: int
    slots_per_rank: int
    device: str
    expert_bytes: int
    revisions: list[int] = Field(description="[L] revision the engine serves per layer.")
    staged: list[StagedInfo]
    placement: list[list[int]] | None = Field(
        default=None, description="[L, P] phy2log, with ?placement=true."
    )
    checkpoint: bool = Field(description="Whether experts can be re-read from a checkpoint.")
