"""Processes and ports of the local world: what every part that starts processes needs.

Kept apart from ``eplb_local.launch`` (which imports torch for its engines) so the control
plane, Prometheus and the node agent, which start no engine, never import torch.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from contextlib import closing

# How long a SIGKILLed process may take to be gone: it always goes, but tearing down one
# with torch's threads and memory took over 5 s on a loaded 2-core machine (a test's
# teardown then failed on a process that was dying).
KILLED_WITHIN = 60.0


def stop_processes(processes: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM every process, then SIGKILL those still running after ``grace`` seconds."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(KILLED_WITHIN)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
