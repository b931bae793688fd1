"""Container probes (httpGet, tcpSocket, exec) and their success/failure thresholds."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ProbeState:
    """One probe of one container: when it runs next and its consecutive results."""

    spec: dict[str, Any]
    next_at: float
    successes: int = 0
    failures: int = 0
    passing: bool = False
    running: bool = False

    @classmethod
    def starting(cls, spec: dict[str, Any], started: float) -> ProbeState:
        return cls(spec, started + float(spec.get("initialDelaySeconds", 0)))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def record(self, ok: bool, now: float) -> None:
        """Count a result; ``passing`` flips after successThreshold / failureThreshold."""
        self.running = False
        self.next_at = now + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.passing = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.passing = False

    @property
    def failed_out(self) -> bool:
        return self.failures >= int(self.spec.get("failureThreshold", 3))


def probe_once(
    spec: dict[str, Any],
    host: str,
    ports: dict[str, int],
    run_exec: Callable[[list[str], float], int],
) -> bool:
    """Run ``spec`` once against a container at ``host``; True on success."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            action = spec["httpGet"]
            port = _port(action["port"], ports)
            scheme = str(action.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{action.get('host') or host}:{port}{action.get('path', '/')}"
            request = urllib.request.Request(url)
            for header in action.get("httpHeaders", []):
                request.add_header(header["name"], header["value"])
            context = None
            if scheme == "https":  # the kubelet does not verify probe certificates
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return bool(200 <= response.status < 400)
        if "tcpSocket" in spec:
            action = spec["tcpSocket"]
            port = _port(action["port"], ports)
            with socket.create_connection((action.get("host") or host, port), timeout=timeout):
                return True
        if "exec" in spec:
            return run_exec(list(spec["exec"]["command"]), timeout) == 0
    except (urllib.error.URLError, OSError, subprocess.TimeoutExpired, ValueError):
        return False
    return False  # grpc and anything else: not supported by the local node


def _port(port: Any, ports: dict[str, int]) -> int:
    if isinstance(port, int):
        return port
    if str(port).isdigit():
        return int(port)
    if port not in ports:
        raise ValueError(f"no container port named {port!r}")
    return ports[port]


def now() -> float:
    return time.monotonic()
