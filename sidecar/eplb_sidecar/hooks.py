"""Where a test harness may step into the sidecar's control calls; nothing happens there in
production.

The sidecar never imports local tooling (``.importlinter``), so a harness that wants to
inject faults (kill the process at a prepare, delay it, corrupt what it sends) registers a
factory under the ``eplb.sidecar_hooks`` entry-point group; :func:`installed_hooks` loads
it.  The images install no such package (``eplb_local`` registers one: its fault injection),
so there the hooks are the no-ops of :class:`ControlHooks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points

import torch

log = logging.getLogger("eplb_sidecar")

HOOKS_GROUP = "eplb.sidecar_hooks"


class ControlHooks:
    """The points a harness may act at, each a no-op here."""

    async def on_call(self, phase: str) -> None:
        """A state-changing call (``prepare``, ``commit``, ``abort``) arrived, before it runs."""

    def on_answered(self, phase: str) -> Callable[[], None] | None:
        """What to run once the whole answer to ``phase`` has gone out (None: nothing, and
        the answer is sent the usual way)."""
        return None

    def outgoing(self, payload: torch.Tensor) -> torch.Tensor:
        """What this pod sends a peer instead of ``payload`` (flat uint8: one peer's experts,
        already fingerprinted, so the receiver can tell a changed payload)."""
        return payload


def installed_hooks() -> ControlHooks:
    """The hooks an installed harness registered, or the no-ops when none did."""
    found = sorted(entry_points(group=HOOKS_GROUP), key=lambda point: point.name)
    if not found:
        return ControlHooks()
    if len(found) > 1:
        log.warning("several %s entry points (%s); using %s", HOOKS_GROUP,
                    ", ".join(point.name for point in found), found[0].name)  # fmt: skip
    factory = found[0].load()
    hooks = factory()
    if not isinstance(hooks, ControlHooks):
        raise TypeError(f"{found[0].value} made a {type(hooks).__name__}, not ControlHooks")
    return hooks
