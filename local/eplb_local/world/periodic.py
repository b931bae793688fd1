"""A background thread that runs :meth:`Periodic.tick` every ``interval`` seconds until stopped."""

from __future__ import annotations

import threading


class Periodic:
    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self.stopped = threading.Event()  # a tick that waits should wait on this
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopped.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.tick()
