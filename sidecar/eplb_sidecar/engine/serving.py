"""The serving loop every engine of this package runs: steps at the workload's pace."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from eplb_sidecar.engine.config import Workload


def serve_paced(
    step: Callable[[int | None], None],
    workload: Callable[[], Workload],
    stop: threading.Event,
) -> None:
    """Call ``step`` until ``stop`` is set, at the pace ``workload()`` asks for.

    ``step(None)`` serves ``workload.tokens_per_step`` tokens; with ``tokens_per_second``
    each call serves the tokens that accrued since the last one (at most 2 seconds' worth,
    so a stalled engine does not burst afterwards).  ``workload`` is read every round:
    ``POST /v1/workload`` takes effect at the next step.
    """
    last = time.monotonic()
    owed = 0.0
    while not stop.is_set():
        current = workload()
        rate = current.tokens_per_second
        if rate is None:
            step(None)
        else:
            now = time.monotonic()
            owed = min(owed + rate * (now - last), 2.0 * rate)
            last = now
            if owed >= 1:
                step(int(owed))
                owed -= int(owed)
        interval = workload().step_interval
        if interval:
            stop.wait(interval)
