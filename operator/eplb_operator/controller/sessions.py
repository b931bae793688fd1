"""Which transfer session (process group) each EP group's prepares name.

Building a group's process group is an all-pairs connect (gloo) or a communicator init
(NCCL): seconds at 32 pods, the largest single cost of a rollout.  A session is therefore
kept for as long as its placement's rollouts succeed and its members stay the same, and
its later rollouts reuse the group the sidecars hold (:class:`eplb_sidecar.transfer.
PeerGroups` keeps the group of the session it was last asked for).

A new session starts when a member changes (another pod, address, or sidecar process:
``Info.incarnation``), when the barrier timeout changes (the group's own timeout is set
when it is built), and after any failure: a failed or interrupted batch may leave members
at different points of the group's collective sequence, so that group is never used again.

Pure bookkeeping, no I/O; kept in the operator's memory per placement (an operator restart
starts new sessions: nothing of them is in the cluster).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

# What must be the same for a kept group to serve a prepare: per member, its index in the
# group, pod UID, store address and sidecar incarnation; then the barrier timeout.
Members = tuple[tuple[tuple[int, str, str, str], ...], float]


@dataclass
class TransferSessions:
    """The sessions of one placement's EP groups (by group name)."""

    # Session names are unique per operator process and placement; the secret proves
    # membership at the transfer gate and reaches pods only over the control API.
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _live: dict[str, tuple[Members, str]] = field(default_factory=dict)
    _started: int = 0

    def session(self, group: str, members: Members) -> str:
        """The session ``group``'s prepares name: the kept one when its members are the
        same, else a new one."""
        kept = self._live.get(group)
        if kept is not None and kept[0] == members:
            return kept[1]
        self._started += 1
        name = f"{self.nonce}-g{group}-s{self._started}"
        self._live[group] = (members, name)
        return name

    def discard(self, group: str) -> None:
        """``group``'s session failed: its next prepare starts a new one."""
        self._live.pop(group, None)

    def discard_all(self) -> None:
        """A rollout failed or was interrupted: no group is trusted any more."""
        self._live.clear()

    @property
    def started(self) -> int:
        """How many sessions were started (one per group, plus one per failure or change)."""
        return self._started
