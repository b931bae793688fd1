"""A pod's ``spec.securityContext.sysctls``, admitted and applied as a kubelet and runc do.

Admission is the kubelet's sysctl allowlist (``pkg/kubelet/sysctl`` of Kubernetes 1.37):
a pod naming a sysctl outside the safe set, or one namespaced in a namespace the pod
shares with the host, is rejected before anything of it runs, with reason
``SysctlForbidden`` and the kubelet's message. The safe set is the kubelet's default one (no
``--allowed-unsafe-sysctls`` here), each sysctl only from the kernel that namespaced it.
This node gives each pod a network namespace of its own but no IPC namespace (the pods
share the host's, as with ``hostIPC``), so the IPC-namespaced safe sysctl
(``kernel.shm_rmid_forced``) is refused the way the kubelet refuses it to a hostIPC pod:
applied, it would change the host.

Applying is runc's: each value written to ``/proc/sys/<name with / for .>`` from inside the
pod's network namespace before any container starts (the kubelet hands them to the pod
sandbox). ``/proc/sys/net`` shows the namespace of the thread that opens it, so a thread
of our own joins the pod's namespace, writes, and ends; the node agent's other threads
never leave the host's.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from pathlib import Path
from typing import Any

from eplb_local.node.network import NETNS_DIR

FORBIDDEN_REASON = "SysctlForbidden"  # the kubelet's sysctl.ForbiddenReason

# The kubelet's safe sysctls (safe_sysctls.go), each with the kernel that namespaced it.
SAFE_SYSCTLS: dict[str, tuple[int, int]] = {
    "kernel.shm_rmid_forced": (0, 0),
    "net.ipv4.ip_local_port_range": (0, 0),
    "net.ipv4.tcp_syncookies": (0, 0),
    "net.ipv4.ping_group_range": (0, 0),
    "net.ipv4.ip_unprivileged_port_start": (0, 0),
    "net.ipv4.ip_local_reserved_ports": (3, 16),
    "net.ipv4.tcp_keepalive_time": (4, 5),
    "net.ipv4.tcp_fin_timeout": (4, 6),
    "net.ipv4.tcp_keepalive_intvl": (4, 5),
    "net.ipv4.tcp_keepalive_probes": (4, 5),
    "net.ipv4.tcp_rmem": (4, 15),
    "net.ipv4.tcp_wmem": (4, 15),
    "net.ipv4.tcp_slow_start_after_idle": (4, 15),
    "net.ipv4.tcp_notsent_lowat": (4, 6),
}

# component-helpers' sysctl namespaces: which of the pod's namespaces a sysctl lives in.
_IPC_NAMES = {"kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
              "kernel.shm_rmid_forced", "kernel.shm", "kernel.msgmax", "kernel.msgmnb",
              "kernel.msgmni", "kernel.msg"}  # fmt: skip
_PREFIXES = {"net": "Net", "fs.mqueue": "IPC", "user": "User"}
# Namespaces a pod of this node shares with the host (it gets only network and mount ones).
_HOST_SHARED = {"IPC": "IPC", "User": "User"}

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``uname -r`` (``6.18.44-fc`` → (6, 18))."""
    match = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def safe_sysctls(kernel: tuple[int, int]) -> frozenset[str]:
    """The kubelet's default allowlist on a node running ``kernel``."""
    return frozenset(name for name, since in SAFE_SYSCTLS.items() if kernel >= since)


def normalize_name(name: str) -> str:
    """The kubelet's ``NormalizeName``: ``net/ipv4/ip_local_port_range`` is
    ``net.ipv4.ip_local_port_range`` (where ``/`` comes first, ``.`` and ``/`` swap)."""
    first = re.search(r"[./]", name)
    if first is None or first.group(0) == ".":
        return name
    return name.translate(str.maketrans("./", "/."))


def namespace_of(name: str) -> str | None:
    """``IPC``, ``Net``, ``User`` or ``UTS``; None when the sysctl is not namespaced."""
    if name in _IPC_NAMES:
        return "IPC"
    if name == "kernel.domainname":
        return "UTS"
    for prefix, namespace in _PREFIXES.items():
        if name.startswith(prefix + "."):
            return namespace
    return None


def pod_sysctls(pod: dict[str, Any]) -> list[tuple[str, str]]:
    """(normalized name, value) of each sysctl the pod asks for, in order."""
    context = pod.get("spec", {}).get("securityContext") or {}
    sysctls = context.get("sysctls") or []
    return [(normalize_name(s["name"]), str(s.get("value", ""))) for s in sysctls]


def forbidden(pod: dict[str, Any], kernel: tuple[int, int]) -> str | None:
    """Why the kubelet would reject ``pod`` for its sysctls (its message), or None."""
    allowed = safe_sysctls(kernel)
    for name, _ in pod_sysctls(pod):
        if name not in allowed:
            return f'forbidden sysctl: "{name}" not allowlisted'
        namespace = namespace_of(name)
        if namespace in _HOST_SHARED:
            return f'forbidden sysctl: "{name}" not allowed with host {namespace} enabled'
    return None


def proc_path(name: str) -> Path:
    """Where runc writes ``name``: dots are directories, a ``/`` inside a component (an
    interface such as ``eno2.100``, normalized to ``eno2/100``) stays a dot."""
    return Path("/proc/sys", *(part.replace("/", ".") for part in name.split(".")))


def write_in_netns(netns: str, sysctls: list[tuple[str, str]]) -> None:
    """Write each (name, value) in the network namespace ``netns`` (``ip netns`` name);
    OSError names the first that failed (the kernel refuses an invalid value)."""
    failures: list[OSError] = []

    def inside() -> None:
        try:
            _join(netns)
            for name, value in sysctls:
                try:
                    proc_path(name).write_text(value + "\n")
                except OSError as error:
                    why = f"sysctl {name}={value!r}: {error.strerror}"
                    raise OSError(error.errno, why) from None
        except OSError as error:
            failures.append(error)

    # A thread that joins the namespace and ends with it: setns moves only the caller.
    worker = threading.Thread(target=inside, name=f"sysctls-{netns}")
    worker.start()
    worker.join()
    if failures:
        raise failures[0]


def _join(netns: str) -> None:
    """Move the calling thread into the network namespace ``netns``."""
    try:
        fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    except OSError as error:
        raise OSError(error.errno, f"joining network namespace {netns}: {error.strerror}") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"joining network namespace {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)
