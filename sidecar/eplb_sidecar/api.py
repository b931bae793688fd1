"""The sidecar's control API models: the contract the operator programs against.

``GET /v1/info`` → :class:`Info`; ``POST /v1/prepare`` :class:`PrepareRequest`;
``POST /v1/commit`` :class:`CommitRequest`; ``POST /v1/abort`` :class:`AbortRequest`;
each answers :class:`Result` or, on refusal, :class:`Problem` with an HTTP status (400 bad
input, 401 unauthenticated, 409 out of order, 503 a peer or the engine did not answer).
Calls are idempotent by (revision, layer).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_PREFIX = "/v1"

# Bounds of every integer that reaches a tensor, the same as the ExpertPlacement CRD's
# (ModelShape.layers, ModelShape.experts, TopologySpec.ranks and slotsPerRank; a unit test
# holds them equal): anything larger cannot be a valid request for any pod, and checking it
# here keeps it away from torch, where it would overflow int64 part-way through a call.
MAX_LAYERS = 1024
MAX_EXPERTS = 8192
MAX_RANKS = 16384
MAX_SLOTS_PER_RANK = 4096
MAX_RANKS_PER_POD = 64  # PodsSpec.ranks_per_pod: local tables one sidecar serves
MAX_REVISION = 2**63 - 1  # revisions are stored in an int64 tensor
MAX_TIMEOUT_SECONDS = 3600.0

# Strict: JSON numbers only (no "3", 3.0 or true standing in for an id).
LayerId = Annotated[int, Field(strict=True, ge=0, lt=MAX_LAYERS)]
ExpertId = Annotated[int, Field(strict=True, ge=0, lt=MAX_EXPERTS)]
RankId = Annotated[int, Field(strict=True, ge=0, lt=MAX_RANKS)]
Revision = Annotated[int, Field(strict=True, ge=1, le=MAX_REVISION)]
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)]
Phy2Log = Annotated[list[ExpertId], Field(min_length=1, max_length=MAX_RANKS * MAX_SLOTS_PER_RANK)]


class TransferGroup(BaseModel):
    """Who takes part in peer transfers for this prepare (the operator decides).

    Every participant receives the same object.  ``session`` names one process-group
    incarnation: the operator changes it whenever membership changes or a prepare failed, so
    a broken group is never reused.  ``store`` is ``host:port`` of the rendezvous store,
    served by the sidecar of the lowest participating rank on its transfer port.  Only
    peers that prove they hold the session's key get through to the store (see
    :mod:`eplb_sidecar.rendezvous`); the key derives from the session and ``secret``, which
    the operator makes per placement (and operator process) and hands out only over this
    authenticated API, or, while an operator sends none, from the control API's bearer token.
    """

    model_config = ConfigDict(extra="forbid")

    session: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/-]+$")
    store: str = Field(max_length=300, pattern=r"^[^:\s]+:\d{1,5}$")
    ranks: list[RankId] = Field(
        min_length=1,
        max_length=MAX_RANKS,
        description="Participating pods by index in their group (Info.rank), ascending; with "
        "one rank per pod, EP ranks.",
    )
    secret: str | None = Field(
        default=None,
        min_length=32,
        max_length=256,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The session's shared secret (e.g. secrets.token_urlsafe(32)); the same "
        "for every participant.",
    )

    @field_validator("store")
    @classmethod
    def _port_in_range(cls, store: str) -> str:
        port = int(store.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1-65535")
        return store


class PrepareRequest(BaseModel):
    """Stage a new placement of some layers; nothing the engine reads changes."""

    model_config = ConfigDict(extra="forbid")

    revision: Revision = Field(description="Placement revision; increases per layer.")
    layers: dict[LayerId, Phy2Log] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        description="layer → phy2log of every slot of the EP group, [P].",
    )
    transfer: TransferGroup | None = Field(
        default=None, description="Peers to fetch from; None: only local slots and checkpoint."
    )
    timeout_seconds: Timeout = 30.0


class CommitRequest(BaseModel):
    """Make staged layers live at the engine's next step boundary."""

    model_config = ConfigDict(extra="forbid")

    revision: Revision
    layers: list[LayerId] = Field(min_length=1, max_length=MAX_LAYERS)
    timeout_seconds: Timeout = 30.0


class AbortRequest(BaseModel):
    """Drop what is staged for ``layers`` (all layers when omitted)."""

    model_config = ConfigDict(extra="forbid")

    revision: Revision
    layers: list[LayerId] | None = Field(default=None, max_length=MAX_LAYERS)


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


class Reason(str, Enum):
    """Why ``/v1/prepare``, ``/v1/commit`` or ``/v1/abort`` was refused (a Problem's
    ``reason``; the token check and aiohttp refuse with reasons of their own)."""

    INVALID_REQUEST = "InvalidRequest"  # not JSON, or not the request's model
    REQUEST_TOO_LARGE = "RequestTooLarge"  # larger than any valid request to this pod
    INVALID_LAYER = "InvalidLayer"
    INVALID_PLACEMENT = "InvalidPlacement"
    INVALID_TRANSFER = "InvalidTransfer"
    OUT_OF_ORDER = "OutOfOrder"
    NOT_PREPARED = "NotPrepared"  # a commit of a revision not staged here
    PLACEMENT_MISMATCH = "PlacementMismatch"  # the transfer group's members serve apart
    NO_SOURCE = "NoSource"  # an expert nobody holds, and no checkpoint
    TRANSFER_FAILED = "TransferFailed"  # a peer did not join or a transfer broke
    TRANSFER_CORRUPT = "TransferCorrupt"  # a peer's expert failed its fingerprint check
    ENGINE_BUSY = "EngineBusy"  # no step boundary within the timeout
    COMMIT_FAILED = "CommitFailed"  # failed part-way, rolled back
    CHECKPOINT_UNREADABLE = "CheckpointUnreadable"
    ROLLBACK_FAILED = "RollbackFailed"  # this pod needs a re-sync


class Problem(BaseModel):
    """A refused call: ``reason`` is a CamelCase word an operator can switch on (a
    :class:`Reason`, or the token check's or the HTTP server's own)."""

    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=100)
    message: str


class StagedInfo(BaseModel):
    revision: int
    layers: list[int]


class Info(BaseModel):
    pod: str
    group: str
    rank: int = Field(
        description="The pod's index in its group: it hosts EP ranks rank*ranks_per_pod … "
        "(rank+1)*ranks_per_pod-1; TransferGroup.ranks are such indices."
    )
    ranks: int = Field(description="EP ranks of the group.")
    ranks_per_pod: int = Field(default=1, description="EP ranks (local tables) of this pod.")
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
    incarnation: str = Field(
        default="",
        max_length=64,
        description="Changes each time the sidecar starts: a transfer group it held is gone.",
    )


def largest_request_bytes(layers: int, num_slots: int, experts: int, ranks: int) -> int:
    """Bytes of the largest valid request to a pod of this shape, as compact JSON.

    That is a prepare of every layer (``num_slots`` ids of the widest width each) with the
    largest revision and timeout and the longest transfer block; commit and abort name
    layers only, far less.  The control server sizes its body limit from it.
    """
    widest_id = len(str(experts - 1)) + len(", ")
    layer = len(f'"{layers - 1}": [], ') + num_slots * widest_id
    transfer = (
        len('"transfer": {"session": "", "store": "", "ranks": [], "secret": ""}, ')
        + 200  # session
        + 300  # store
        + 256  # secret
        + ranks * (len(str(ranks - 1)) + len(", "))
    )
    top = len('{"revision": , "layers": {}, "timeout_seconds": }') + 19 + 24
    return top + layers * layer + transfer
