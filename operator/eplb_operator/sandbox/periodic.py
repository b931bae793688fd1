"""A background thread that runs one action every ``interval`` seconds until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    def __init__(self, name: str, interval: float, action: Callable[[], None]) -> None:
        self.interval = interval
        self.action = action
        self.stopped = threading.Event()  # actions that wait should wait on this
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stopped.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.action()
