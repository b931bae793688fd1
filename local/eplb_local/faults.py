"""Fault injection in sidecars, for chaos tests and the demo's ``--fault``.

Registered as the sidecar's ``eplb.sidecar_hooks`` entry point (pyproject.toml), so a
sidecar started where the local tooling is installed runs these hooks; the images install
none.  A pod's fault is named by ``EPLB_SIDECAR_FAULT``, or by the content of the file that
``EPLB_SIDECAR_FAULT_FILE`` names (tests write it into a pod's volume at run time):

- ``exit-at-prepare``, ``exit-at-commit``: the process dies on receiving the call
  (SIGKILL-like: no cleanup, no answer);
- ``exit-after-prepare``: it sends its whole answer to a prepare, then dies, so the
  operator's commit finds it gone;
- ``delay-prepare=SECONDS``: every prepare first waits that long (a slow pod);
- ``corrupt-send``: one bit of the first expert this pod sends a peer is flipped;
  ``truncate-send``: the last half of the payload is dropped (gloo takes the short message
  into the receiver's longer buffer without complaint).

A fault given by file fires once (the file is removed), so the restarted container, or the
operator's retry, finds a healthy pod; one given by environment stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch

from eplb_sidecar.hooks import ControlHooks

log = logging.getLogger("eplb_sidecar")

FAULT_ENV = "EPLB_SIDECAR_FAULT"
FAULT_FILE_ENV = "EPLB_SIDECAR_FAULT_FILE"


def current_fault() -> str:
    """The fault to inject now ("" for none)."""
    path = os.environ.get(FAULT_FILE_ENV, "")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""
    return os.environ.get(FAULT_ENV, "")


def clear_fault() -> None:
    """A fault that fires once removes its file (one given by environment stays)."""
    path = os.environ.get(FAULT_FILE_ENV, "")
    if path:
        Path(path).unlink(missing_ok=True)


def die_of_fault() -> NoReturn:
    """An ``exit-…`` fault fires once: the restarted container starts without it."""
    clear_fault()
    os._exit(137)


class FaultInjection(ControlHooks):
    """The sidecar's hooks acting on :func:`current_fault`."""

    async def on_call(self, phase: str) -> None:
        fault = current_fault()
        if fault == f"exit-at-{phase}":
            die_of_fault()
        if fault.startswith(f"delay-{phase}="):
            seconds = float(fault.split("=", 1)[1])
            # Logged as it starts: a test can act while the call is in flight.
            log.warning("fault injected: this %s waits %g s", phase, seconds)
            await asyncio.sleep(seconds)

    def on_answered(self, phase: str) -> Callable[[], None] | None:
        return die_of_fault if current_fault() == f"exit-after-{phase}" else None

    def outgoing(self, payload: torch.Tensor) -> torch.Tensor:
        fault = current_fault()
        if fault not in ("corrupt-send", "truncate-send"):
            return payload
        clear_fault()
        if fault == "truncate-send":
            return payload[: payload.numel() // 2].clone()
        corrupted = payload.clone()
        corrupted[0] ^= 1
        return corrupted
