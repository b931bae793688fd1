"""Why the executor refuses a call: domain errors, one class per :class:`Reason`.

The executor (:mod:`.shuffle`) raises these and knows nothing of HTTP (the server raises the
two about the request body); the server (:mod:`.server`) alone turns each into a status code
and a :class:`~eplb_sidecar.api.Problem` body, from its ``STATUS`` table.  A refused call
leaves the pod as it was: nothing staged or served changed (a failed commit is rolled back
first; only :class:`RollbackFailedError` says that could not be done).
"""

from __future__ import annotations

from typing import ClassVar

from eplb_sidecar.api import Reason


class RefusedError(Exception):
    """A refused call; ``reason`` says why, ``message`` says it to a person."""

    reason: ClassVar[Reason]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- the caller sent something this pod can never do ---------------------------------------
class InvalidRequestError(RefusedError):
    """A body that is not JSON, or not the call's request model (the server parses it)."""

    reason = Reason.INVALID_REQUEST


class RequestTooLargeError(RefusedError):
    """A body larger than any valid request to this pod (the server reads it)."""

    reason = Reason.REQUEST_TOO_LARGE


class InvalidLayerError(RefusedError):
    """A layer id outside the model's layers."""

    reason = Reason.INVALID_LAYER


class InvalidPlacementError(RefusedError):
    """A ``phy2log`` of the wrong length, an expert id out of range, an expert left without a
    replica."""

    reason = Reason.INVALID_PLACEMENT


class InvalidTransferError(RefusedError):
    """``transfer`` names ranks this pod cannot take part with."""

    reason = Reason.INVALID_TRANSFER


# -- the call does not fit what this pod has staged or serves now ------------------------
class OutOfOrderError(RefusedError):
    """A revision that is not newer than what a layer serves, or that differs from what is
    staged for it (commit or abort that first)."""

    reason = Reason.OUT_OF_ORDER


class NotPreparedError(RefusedError):
    """A commit of a revision this pod has not staged (it may have restarted since)."""

    reason = Reason.NOT_PREPARED


class PlacementMismatchError(RefusedError):
    """The transfer group's members disagree on what they serve: re-sync them first."""

    reason = Reason.PLACEMENT_MISMATCH


class NoSourceError(RefusedError):
    """An expert no participant holds, and no checkpoint to read it from."""

    reason = Reason.NO_SOURCE


# -- the pod or its peers could not do it now (retry) ----------------------------------------
class TransferFailedError(RefusedError):
    """A peer did not join or a transfer broke; the transfer session is spent."""

    reason = Reason.TRANSFER_FAILED


class TransferCorruptError(RefusedError):
    """A peer's expert arrived corrupt or truncated (its fingerprint did not match); nothing
    was staged and the transfer session is spent."""

    reason = Reason.TRANSFER_CORRUPT


class EngineBusyError(RefusedError):
    """The engine did not reach a step boundary within the call's timeout."""

    reason = Reason.ENGINE_BUSY


class CommitFailedError(RefusedError):
    """A commit failed part-way and was rolled back: every layer serves what it served, its
    staging intact for a retry."""

    reason = Reason.COMMIT_FAILED


# -- the pod itself is in trouble --------------------------------------------------------
class CheckpointUnreadableError(RefusedError):
    """The model checkpoint could not be read."""

    reason = Reason.CHECKPOINT_UNREADABLE


class RollbackFailedError(RefusedError):
    """A commit failed and putting its layers back failed too: the pod needs a re-sync."""

    reason = Reason.ROLLBACK_FAILED
