"""What a kubelet does for crashed sidecar containers: start them again, and count it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from eplb_operator.sandbox.periodic import Periodic
from eplb_sidecar.launch import LocalGroup


@dataclass(frozen=True)
class Restart:
    pod: str
    exit_code: int | None
    time: float  # unix


class Kubelet(Periodic):
    """Restarts a group's dead sidecars (without any fault injected at their first start)."""

    def __init__(self, group: LocalGroup, backoff: float = 1.0) -> None:
        super().__init__("kubelet", 0.2)
        self.group = group
        self.backoff = backoff
        self.restarts: list[Restart] = []

    def tick(self) -> None:
        for pod in self.group.pods:
            sidecar = pod.sidecar
            if sidecar is None or sidecar.poll() is None:
                continue
            if self.stopped.wait(self.backoff):  # CrashLoopBackOff's first step
                return
            self.restarts.append(Restart(pod.name, sidecar.returncode, time.time()))
            self.group.start_sidecar(pod)
