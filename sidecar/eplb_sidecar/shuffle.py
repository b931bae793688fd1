"""Prepare / commit / abort of new placements on one pod: the only code that writes weights.

prepare validates everything first, then stages: experts this rank lacks arrive from peers
(or the checkpoint) into staging buffers, and slots that a copy cycle would overwrite are
saved.  Nothing the engine reads changes.  commit holds the engine at a step boundary,
writes each changed slot exactly once (in an order that never reads an overwritten slot)
and flips the routing table; it is all-or-nothing: should anything fail part-way, every
layer it touched is put back before the engine is released (from sources the commit never
writes, see :func:`~eplb_sidecar.moves.undo_order`).  abort drops staging.  Idempotent by
(revision, layer).  A refused call raises a domain error of :mod:`.refusals`; only the
server knows their HTTP statuses.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from eplb_core.placements import placement_error
from eplb_sidecar.api import (
    AbortRequest,
    CommitRequest,
    Info,
    LayerResult,
    PrepareRequest,
    Result,
    StagedInfo,
)
from eplb_sidecar.checkpoint import CheckpointError, CheckpointReader
from eplb_sidecar.contract.pod import PodTables
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.moves import (
    CHECKPOINT,
    Fetch,
    FromFetched,
    FromSaved,
    FromSlot,
    Write,
    commit_order,
    plan_fetches,
    undo_order,
)
from eplb_sidecar.refusals import (
    CheckpointUnreadableError,
    CommitFailedError,
    EngineBusyError,
    InvalidLayerError,
    InvalidPlacementError,
    InvalidTransferError,
    NoSourceError,
    NotPreparedError,
    OutOfOrderError,
    PlacementMismatchError,
    RollbackFailedError,
    TransferCorruptError,
    TransferFailedError,
)
from eplb_sidecar.transfer import (
    CorruptTransferError,
    PeerGroups,
    TransferError,
    agree,
    digest,
    exchange,
    fingerprints,
)

Weights = dict[str, torch.Tensor]
Copies = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StagedLayer:
    """A prepared layer: the new ``phy2log`` ``[P]`` (and the old one, ``previous``), the
    writes and their staged sources, and the restores that undo them."""

    revision: int
    phy2log: torch.Tensor
    previous: torch.Tensor
    writes: list[Write]
    restores: list[Write]
    fetched: dict[int, Weights] = field(default_factory=dict)
    saved: dict[int, Weights] = field(default_factory=dict)
    result: LayerResult | None = None
    # (destination, source) views in commit order, built at prepare: indexing a tensor costs
    # microseconds of Python, which would otherwise stall the engine during the commit.
    copies: Copies = field(default_factory=list)
    undo: Copies = field(default_factory=list)


def _gather(pieces: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """``pieces`` (flat bytes) as one buffer on ``device``: concatenated where they lie when
    they share a device (one copy to ``device``), else each moved first (slots of several
    local GPUs)."""
    if len({piece.device for piece in pieces}) == 1:
        return torch.cat(pieces).to(device)
    return torch.cat([piece.to(device) for piece in pieces])


class ShuffleExecutor:
    """The per-pod state machine behind the control API.  Not thread-safe: callers serialize."""

    def __init__(
        self,
        table: ExpertTable | PodTables,
        pod: str,
        peers: PeerGroups | None = None,
        checkpoint: CheckpointReader | None = None,
        tamper: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``table``: the pod's local tables (one ExpertTable: a pod of one rank).
        ``tamper``: what a test harness does to each payload this pod sends, after its
        fingerprints were taken (:meth:`eplb_sidecar.hooks.ControlHooks.outgoing`); None
        sends it as it is.

        Everything below works on the pod as one member of its group (``self.tables.layout``:
        ``rank`` is the pod's index, ``slots_per_rank`` its ``K*S`` slots), so moves between
        its local ranks are local slot copies and only what crosses pods is transferred.
        """
        self.tables = table if isinstance(table, PodTables) else PodTables([table])
        self.pod = pod
        self.peers = peers
        self.checkpoint = checkpoint
        self.tamper: Callable[[torch.Tensor], torch.Tensor] = tamper or (lambda payload: payload)
        self.staged: dict[int, StagedLayer] = {}
        self.incarnation = secrets.token_hex(8)  # Info.incarnation
        layout = self.tables.layout
        nccl = peers is not None and peers.backend == "nccl"
        self._transfer_device = torch.device(layout.device if nccl else "cpu")
        self._specs = layout.weights
        self.bytes_moved: dict[str, int] = {"local": 0, "peer": 0, "checkpoint": 0}
        self.last_stall_seconds = 0.0  # the engine was held this long by the last commit
        self.last_transfer_seconds = 0.0  # the last prepare's peer exchange took this long

    @property
    def table(self) -> ExpertTable:
        """The first local rank's table (the only one on a pod of one rank)."""
        return self.tables.tables[0]

    # -- info ----------------------------------------------------------------------------
    def info(self, with_placement: bool = False) -> Info:
        layout = self.tables.rank_layout
        by_revision: dict[int, list[int]] = {}
        for layer, staged in sorted(self.staged.items()):
            by_revision.setdefault(staged.revision, []).append(layer)
        return Info(
            pod=self.pod,
            group=layout.group,
            rank=self.tables.layout.rank,
            ranks=layout.ranks,
            ranks_per_pod=self.tables.ranks_per_pod,
            layers=layout.layers,
            experts=layout.experts,
            slots_per_rank=layout.slots_per_rank,
            device=layout.device,
            expert_bytes=layout.expert_nbytes,
            revisions=self.tables.revisions.tolist(),
            staged=[StagedInfo(revision=r, layers=ls) for r, ls in sorted(by_revision.items())],
            placement=self.tables.routing.tolist() if with_placement else None,
            checkpoint=self.checkpoint is not None,
            incarnation=self.incarnation,
        )

    # -- prepare -------------------------------------------------------------------------
    def prepare(self, request: PrepareRequest) -> Result:
        started = time.monotonic()
        self.last_transfer_seconds = 0.0
        self._use_engine_device()
        layout = self.tables.layout
        layer_ids = sorted(request.layers)
        self._check_layers(layer_ids)
        rows = [request.layers[layer] for layer in layer_ids]
        if any(len(row) != layout.num_slots for row in rows):
            bad = next(lay for lay in layer_ids if len(request.layers[lay]) != layout.num_slots)
            raise InvalidPlacementError(
                f"layer {bad}: {len(request.layers[bad])} slots, the EP group has "
                f"{layout.num_slots} ({self.tables.rank_layout.ranks} ranks x "
                f"{self.tables.rank_layout.slots_per_rank})"
            )
        new = torch.tensor(rows, dtype=torch.int64)
        error = placement_error(new, layout.num_slots, layout.experts, layer_ids)
        if error is not None:
            raise InvalidPlacementError(error)
        participants = self._participants(request)

        results: dict[int, LayerResult] = {}
        fresh: dict[int, torch.Tensor] = {}
        for layer, row in zip(layer_ids, new, strict=False):
            outcome = self._prepare_outcome(layer, request.revision, row)
            if outcome is None:
                fresh[layer] = row
            else:
                results[layer] = outcome

        staged = self._stage(request, fresh, participants) if fresh else {}
        for layer, staged_layer in staged.items():
            assert staged_layer.result is not None
            results[layer] = staged_layer.result
        self.staged.update(staged)
        return Result(
            revision=request.revision,
            layers=[results[layer] for layer in layer_ids],
            seconds=time.monotonic() - started,
            transfer_seconds=self.last_transfer_seconds,
        )

    def _participants(self, request: PrepareRequest) -> list[int]:
        rank, ranks = self.tables.layout.rank, self.tables.layout.ranks
        if request.transfer is None:
            return [rank]
        members = request.transfer.ranks
        if members != sorted(set(members)) or members[0] < 0 or members[-1] >= ranks:
            raise InvalidTransferError(
                f"transfer ranks (pod indices) must be ascending, unique, in [0, {ranks})"
            )
        if rank not in members:
            raise InvalidTransferError(f"this pod's index {rank} is not in transfer.ranks")
        if self.peers is None and len(members) > 1:
            raise InvalidTransferError("this sidecar runs without a transfer port")
        return members

    def _prepare_outcome(self, layer: int, revision: int, row: torch.Tensor) -> LayerResult | None:
        """The answer for a layer that needs no work, None when it must be staged."""
        current = int(self.tables.revisions[layer])
        staged = self.staged.get(layer)
        if staged is not None:
            if staged.revision == revision and torch.equal(staged.phy2log, row):
                return LayerResult(layer=layer, outcome="already-staged")
            raise OutOfOrderError(
                f"layer {layer} has revision {staged.revision} staged with a different "
                f"placement; commit or abort it first"
            )
        if revision == current and torch.equal(self.tables.routing[layer], row):
            return LayerResult(layer=layer, outcome="already-committed")
        if revision <= current:
            raise OutOfOrderError(
                f"layer {layer} serves revision {current}; revision {revision} is not newer"
            )
        return None

    def _stage(
        self, request: PrepareRequest, fresh: dict[int, torch.Tensor], participants: list[int]
    ) -> dict[int, StagedLayer]:
        layout = self.tables.layout
        rank, S = layout.rank, layout.slots_per_rank
        pairs = {layer: (self.tables.routing[layer].clone(), row) for layer, row in fresh.items()}
        fetches = plan_fetches(pairs, S, participants)
        mine = [f for f in fetches if f.dst_rank == rank]
        need_checkpoint = any(f.src_rank == CHECKPOINT for f in mine)
        ready = self.checkpoint is not None or not need_checkpoint
        peers_involved = any(f.src_rank not in (CHECKPOINT, f.dst_rank) for f in fetches)

        session = None
        if peers_involved:
            assert request.transfer is not None and self.peers is not None
            fingerprint = digest(
                torch.tensor(sorted(fresh)),
                self.tables.revisions[sorted(fresh)],
                torch.stack([pairs[layer][0] for layer in sorted(fresh)]),
                torch.stack([pairs[layer][1] for layer in sorted(fresh)]),
            )
            try:
                session = self.peers.group(request.transfer, rank, request.timeout_seconds)
                views = agree(session, rank, fingerprint, ready)
            except TransferError as error:
                self.peers.poison(request.transfer.session)
                raise TransferFailedError(str(error)) from error
            differ = sorted(r for r, (fp, _) in views.items() if fp != fingerprint)
            if differ:
                raise PlacementMismatchError(
                    f"ranks {differ} disagree with rank {rank} on the current placement or "
                    f"revision of layers {sorted(fresh)}; re-sync them first"
                )
            unready = sorted(r for r, (_, ok) in views.items() if not ok)
            if unready:
                raise NoSourceError(
                    f"ranks {unready} need experts no participant holds and have no checkpoint"
                )
        if not ready:
            missing = next(f for f in mine if f.src_rank == CHECKPOINT)
            raise NoSourceError(
                f"layer {missing.layer}: expert {missing.expert} is held by no participating "
                f"peer and this sidecar has no checkpoint"
            )

        staged: dict[int, StagedLayer] = {}
        for layer, row in fresh.items():
            old = pairs[layer][0]
            writes, saves = commit_order(old, row, rank, S)
            restores, undo_saves = undo_order(old, row, rank, S, saves)
            staged[layer] = StagedLayer(
                revision=request.revision,
                phy2log=row,
                previous=old,
                writes=writes,
                restores=restores,
                saved={slot: self._slot_copy(layer, slot) for slot in saves + undo_saves},
            )
        if session is not None:
            try:
                self._fetch_from_peers(session, fetches, staged)
            except TransferError as error:
                assert request.transfer is not None and self.peers is not None
                self.peers.poison(request.transfer.session)
                if isinstance(error, CorruptTransferError):
                    raise TransferCorruptError(str(error)) from error
                raise TransferFailedError(str(error)) from error
        for fetch in mine:
            if fetch.src_rank == CHECKPOINT:
                assert self.checkpoint is not None
                try:
                    weights = self.checkpoint.read(fetch.layer, fetch.expert, layout.device)
                except CheckpointError as error:
                    raise CheckpointUnreadableError(str(error)) from error
                staged[fetch.layer].fetched[fetch.expert] = weights

        for layer, staged_layer in staged.items():
            staged_layer.result = self._layer_result(layer, staged_layer, mine)
            staged_layer.copies = self._copy_views(layer, staged_layer, staged_layer.writes)
            staged_layer.undo = self._copy_views(layer, staged_layer, staged_layer.restores)
        return staged

    def _fetch_from_peers(
        self, session: object, fetches: list[Fetch], staged: dict[int, StagedLayer]
    ) -> None:
        """Send what peers lack from this rank's slots; receive what this rank lacks.

        One message per peer and direction: the sender gathers the experts' bytes into one
        buffer (a device copy, a fraction of the transfer's time), the receiver stages views
        of the buffer it received into (no copy).  Many small messages cost far more on
        NCCL than the gather does.  With each buffer goes the sender's fingerprint of every
        expert in it (``[experts]`` int64, :func:`~eplb_sidecar.transfer.fingerprints`); the
        receiver checks them before staging anything, since neither backend notices a
        corrupt message, and gloo takes a short one into a longer buffer without a word.
        """
        rank = self.tables.layout.rank
        device = self._transfer_device
        target = torch.device(self.tables.layout.device)
        expert_bytes = self.tables.layout.expert_nbytes
        sends: dict[int, list[Fetch]] = {}
        receives: dict[int, list[Fetch]] = {}
        for fetch in fetches:  # one global order: both ends list a pair's experts alike
            if fetch.src_rank == rank:
                sends.setdefault(fetch.dst_rank, []).append(fetch)
            elif fetch.dst_rank == rank and fetch.src_rank != CHECKPOINT:
                receives.setdefault(fetch.src_rank, []).append(fetch)
        started = time.perf_counter()  # the gather copy counts as part of the transfer
        outgoing = {
            peer: [
                _gather(
                    [
                        self.tables.weights[spec.name][f.layer, f.src_slot]
                        .reshape(-1)
                        .view(torch.uint8)
                        for f in sent
                        for spec in self._specs
                    ],
                    device,
                )
            ]
            for peer, sent in sends.items()
        }
        for peer, sent in sends.items():
            payload = outgoing[peer][0]
            # Fingerprints of what this rank holds, then the payload as it leaves (a chaos
            # test's tamper may corrupt or cut it on the way).
            outgoing[peer] = [self.tamper(payload), fingerprints(payload, len(sent))]
        incoming = {
            peer: [
                torch.empty(len(got) * expert_bytes, dtype=torch.uint8, device=device),
                torch.empty(len(got), dtype=torch.int64, device=device),
            ]
            for peer, got in receives.items()
        }
        exchange(session, rank, outgoing, incoming)  # type: ignore[arg-type]
        # The check counts as part of the transfer (reading .tolist() waits for the GPU).
        for peer, got in receives.items():
            buffer, announced = incoming[peer]
            arrived = fingerprints(buffer, len(got))
            bad = [f for f, ok in zip(got, torch.eq(arrived, announced).tolist(), strict=True)
                   if not ok]  # fmt: skip
            if bad:
                named = ", ".join(f"layer {f.layer} expert {f.expert}" for f in bad[:5])
                raise CorruptTransferError(
                    f"{len(bad)} of {len(got)} experts from rank {peer} differ from the "
                    f"fingerprints it sent ({named}): corrupt or truncated in transfer; "
                    f"nothing staged"
                )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.last_transfer_seconds = time.perf_counter() - started
        for peer, got in receives.items():
            buffer = incoming[peer][0]
            if device != target:  # gloo with GPU weights: received in host memory
                buffer = buffer.to(target)
            offset = 0
            for fetch in got:
                weights = {}
                for spec in self._specs:
                    chunk = buffer[offset : offset + spec.nbytes]
                    weights[spec.name] = chunk.view(spec.torch_dtype).view(spec.shape)
                    offset += spec.nbytes
                staged[fetch.layer].fetched[fetch.expert] = weights

    def _layer_result(self, layer: int, staged: StagedLayer, mine: list[Fetch]) -> LayerResult:
        expert_bytes = self.tables.layout.expert_nbytes
        local = sum(1 for w in staged.writes if not isinstance(w.source, FromFetched))
        from_peer = sum(1 for f in mine if f.layer == layer and f.src_rank != CHECKPOINT)
        from_checkpoint = sum(1 for f in mine if f.layer == layer and f.src_rank == CHECKPOINT)
        return LayerResult(
            layer=layer,
            outcome="staged",
            moves=len(staged.writes),
            bytes_local=local * expert_bytes,
            bytes_peer=from_peer * expert_bytes,
            bytes_checkpoint=from_checkpoint * expert_bytes,
        )

    def _slot_copy(self, layer: int, slot: int) -> Weights:
        return {name: w[layer, slot].clone() for name, w in self.tables.weights.items()}

    # -- commit --------------------------------------------------------------------------
    def commit(self, request: CommitRequest) -> Result:
        started = time.monotonic()
        self._use_engine_device()
        layers = sorted(set(request.layers))
        self._check_layers(layers)
        results: dict[int, LayerResult] = {}
        to_apply: list[int] = []
        for layer in layers:
            staged = self.staged.get(layer)
            if staged is not None and staged.revision == request.revision:
                to_apply.append(layer)
            elif staged is None and int(self.tables.revisions[layer]) == request.revision:
                results[layer] = LayerResult(layer=layer, outcome="already-committed")
            else:
                what = f"revision {staged.revision} is staged" if staged else "nothing is staged"
                raise NotPreparedError(
                    f"layer {layer}: revision {request.revision} was not prepared here ({what})"
                )
        self.last_stall_seconds = 0.0
        if to_apply:
            # What a rollback restores besides the weights, read before the engine is held
            # (only commits change it, and they are serialized).
            before = [
                (layer, self.tables.counter_base(layer), int(self.tables.revisions[layer]))
                for layer in to_apply
            ]
            try:
                with self.tables.commit_window(request.timeout_seconds):
                    held = time.perf_counter()
                    self._apply_all(before)
                    self.last_stall_seconds = time.perf_counter() - held
            except TimeoutError as error:
                raise EngineBusyError(str(error)) from error
        for layer in to_apply:
            staged = self.staged.pop(layer)
            assert staged.result is not None
            results[layer] = staged.result.model_copy(update={"outcome": "committed"})
            self.bytes_moved["local"] += staged.result.bytes_local
            self.bytes_moved["peer"] += staged.result.bytes_peer
            self.bytes_moved["checkpoint"] += staged.result.bytes_checkpoint
        return Result(
            revision=request.revision,
            layers=[results[layer] for layer in layers],
            seconds=time.monotonic() - started,
            stall_seconds=self.last_stall_seconds,
        )

    def _copy_views(self, layer: int, staged: StagedLayer, writes: list[Write]) -> Copies:
        """``writes`` as (slot view, source view) copies, in their order."""
        copies = []
        for write in writes:
            for name, tensor in self.tables.weights.items():
                source = write.source
                if isinstance(source, FromSlot):
                    value = tensor[layer, source.slot]
                elif isinstance(source, FromSaved):
                    value = staged.saved[source.slot][name]
                else:
                    value = staged.fetched[source.expert][name]
                copies.append((tensor[layer, write.slot], value))
        return copies

    def _apply_all(self, layers: list[tuple[int, torch.Tensor, int]]) -> None:
        """Apply every staged layer of ``layers``, or none (engine held).

        ``layers``: (layer, its ``counter_base`` row ``[S]``, its revision) as they are now.
        Should anything fail part-way (a copy, a device error), every layer touched so far
        is put back before the engine is released, and the call is refused: the pod keeps
        serving exactly what it served, its staging intact for a retry.
        """
        cuda = self.tables.layout.device.startswith("cuda")
        touched: list[tuple[int, torch.Tensor, int]] = []
        try:
            for entry in layers:
                touched.append(entry)
                self._apply(entry[0], self.staged[entry[0]])
            if cuda:
                self._synchronize()
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
            try:
                for layer, counter_base, revision in reversed(touched):
                    self._restore(layer, self.staged[layer], counter_base, revision)
                if cuda:
                    self._synchronize()
            except Exception as second:
                raise RollbackFailedError(
                    f"commit failed ({failure}) and putting layers {[t[0] for t in touched]} "
                    f"back failed too ({type(second).__name__}: {second}); re-sync this pod"
                ) from second
            raise CommitFailedError(
                f"commit failed and was rolled back, every layer serves what it served "
                f"before ({failure})"
            ) from error

    def _apply(self, layer: int, staged: StagedLayer) -> None:
        """Write the changed slots of ``layer`` and flip its routing row (engine held)."""
        for target, source in staged.copies:
            target.copy_(source, non_blocking=True)
        changed = [write.slot for write in staged.writes]
        self.tables.flip(layer, staged.phy2log, staged.revision, changed)

    def _restore(
        self, layer: int, staged: StagedLayer, counter_base: torch.Tensor, revision: int
    ) -> None:
        """Undo :meth:`_apply` of ``layer``, wherever it stopped (engine held)."""
        for target, source in staged.undo:
            target.copy_(source, non_blocking=True)
        self.tables.restore(layer, counter_base, staged.previous, revision)

    # -- abort ---------------------------------------------------------------------------
    def abort(self, request: AbortRequest) -> Result:
        started = time.monotonic()
        layers = sorted(set(request.layers)) if request.layers is not None else sorted(self.staged)
        self._check_layers(layers)
        newer = [
            layer
            for layer in layers
            if layer in self.staged and self.staged[layer].revision > request.revision
        ]
        if newer:
            raise OutOfOrderError(
                f"layers {newer} have a revision newer than {request.revision} staged"
            )
        results = []
        for layer in layers:
            dropped = self.staged.pop(layer, None)
            outcome = "aborted" if dropped is not None else "nothing-staged"
            results.append(LayerResult(layer=layer, outcome=outcome))
        return Result(revision=request.revision, layers=results, seconds=time.monotonic() - started)

    def _use_engine_device(self) -> None:
        """Calls run in worker threads, whose current CUDA device is the default one."""
        device = torch.device(self.tables.layout.device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)

    def _synchronize(self) -> None:
        """Wait for the copies on every local GPU (copies between GPUs run on both)."""
        for device in self.tables.devices:
            torch.cuda.synchronize(device)

    def _check_layers(self, layers: list[int]) -> None:
        num_layers = self.tables.layout.layers
        bad = [layer for layer in layers if not 0 <= layer < num_layers]
        if bad:
            raise InvalidLayerError(f"layers {bad} are outside [0, {num_layers})")
