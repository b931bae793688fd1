"""The local node's sysctl admission (the kubelet's allowlist, table-driven) and its writing
of sysctls into a real network namespace (as root, as the node runs)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eplb_local.node.sysctls import (
    SAFE_SYSCTLS,
    forbidden,
    kernel_version,
    normalize_name,
    pod_sysctls,
    proc_path,
    write_in_netns,
)

RECENT = (6, 1)


def pod(*sysctls: tuple[str, str]) -> dict[str, Any]:
    return {"spec": {"securityContext": {"sysctls": [{"name": n, "value": v} for n, v in sysctls]}}}


@pytest.mark.parametrize(
    ("name", "normalized"),
    [  # the kubelet's NormalizeName cases
        ("net.ipv4.ip_local_port_range", "net.ipv4.ip_local_port_range"),
        ("net/ipv4/ip_local_port_range", "net.ipv4.ip_local_port_range"),
        ("net/ipv4/conf/eno2.100/rp_filter", "net.ipv4.conf.eno2/100.rp_filter"),
        ("net.ipv4.conf.eno2/100.rp_filter", "net.ipv4.conf.eno2/100.rp_filter"),
        ("kernel", "kernel"),
    ],
)
def test_names_are_normalized_as_the_kubelet_does(name: str, normalized: str) -> None:
    assert normalize_name(name) == normalized


def test_runc_writes_dots_as_directories_and_keeps_an_interfaces_dot() -> None:
    assert proc_path("net.ipv4.ip_local_port_range") == Path(
        "/proc/sys/net/ipv4/ip_local_port_range"
    )
    assert proc_path("net.ipv4.conf.eno2/100.rp_filter") == Path(
        "/proc/sys/net/ipv4/conf/eno2.100/rp_filter"
    )


@pytest.mark.parametrize(
    ("sysctls", "kernel", "refusal"),
    [
        ([], RECENT, None),
        ([("net.ipv4.ip_local_port_range", "29471 29800")], RECENT, None),
        (
            [
                ("net/ipv4/ip_local_port_range", "29471 29800"),
                ("net.ipv4.ip_local_reserved_ports", "29500"),
            ],
            RECENT,
            None,
        ),
        (
            [("kernel.msgmax", "65536")],
            RECENT,
            'forbidden sysctl: "kernel.msgmax" not allowlisted',
        ),
        # Namespaced, but not on the safe list: the node would have to allow it.
        (
            [("net.core.somaxconn", "1024")],
            RECENT,
            'forbidden sysctl: "net.core.somaxconn" not allowlisted',
        ),
        ([("vm.swappiness", "1")], RECENT, 'forbidden sysctl: "vm.swappiness" not allowlisted'),
        # Safe, but IPC-namespaced: this node's pods share the host's IPC namespace.
        (
            [("kernel.shm_rmid_forced", "1")],
            RECENT,
            'forbidden sysctl: "kernel.shm_rmid_forced" not allowed with host IPC enabled',
        ),
        # The first refused sysctl is the one named, after the allowed ones.
        (
            [("net.ipv4.tcp_syncookies", "1"), ("net/core/somaxconn", "1024")],
            RECENT,
            'forbidden sysctl: "net.core.somaxconn" not allowlisted',
        ),
        # Only from the kernel that namespaced it.
        (
            [("net.ipv4.tcp_keepalive_time", "600")],
            (4, 4),
            'forbidden sysctl: "net.ipv4.tcp_keepalive_time" not allowlisted',
        ),
        ([("net.ipv4.tcp_keepalive_time", "600")], (4, 5), None),
        (
            [("net.ipv4.tcp_rmem", "4096 87380 6291456")],
            (4, 14),
            'forbidden sysctl: "net.ipv4.tcp_rmem" not allowlisted',
        ),
    ],
)
def test_admission_follows_the_kubelets_allowlist(
    sysctls: list[tuple[str, str]], kernel: tuple[int, int], refusal: str | None
) -> None:
    assert forbidden(pod(*sysctls), kernel) == refusal


def test_every_safe_sysctl_is_admitted_on_a_recent_kernel_but_the_ipc_one() -> None:
    for name in SAFE_SYSCTLS:
        refusal = forbidden(pod((name, "1")), RECENT)
        assert (refusal is not None) == name.startswith("kernel."), (name, refusal)
    assert forbidden({"spec": {}}, RECENT) is None
    assert forbidden({"spec": {"securityContext": {"sysctls": None}}}, RECENT) is None


def test_the_kernel_version_is_major_and_minor() -> None:
    assert kernel_version("6.18.44-fc-v1272") == (6, 18)
    assert kernel_version("4.15.0-213-generic") == (4, 15)
    assert kernel_version("weird") == (0, 0)
    assert pod_sysctls(pod(("net/ipv4/tcp_syncookies", "1"))) == [("net.ipv4.tcp_syncookies", "1")]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (as the node makes one per pod)."""
    name = f"eplb-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def inside(netns: str, *argv: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout


def test_sysctls_are_written_in_the_pods_namespace_only(netns: str) -> None:
    host = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    write_in_netns(netns, [("net.ipv4.ip_local_port_range", "29471 29800"),
                           ("net.ipv4.tcp_keepalive_time", "600")])  # fmt: skip
    assert inside(netns, "cat", "/proc/sys/net/ipv4/ip_local_port_range").split() == [
        "29471", "29800"]  # fmt: skip
    assert inside(netns, "cat", "/proc/sys/net/ipv4/tcp_keepalive_time").strip() == "600"
    assert Path("/proc/sys/net/ipv4/ip_local_port_range").read_text() == host
    # What it is for: a socket bound to port 0 in the namespace gets a port of the range.
    # (All kept open: a closed one's port could come again.)
    script = "import socket\nheld = [socket.socket() for _ in range(20)]\nfor s in held:\n"
    script += " s.bind(('', 0)); print(s.getsockname()[1])"
    bound = inside(netns, "python3", "-c", script)
    ports = {int(port) for port in bound.split()}
    assert len(ports) == 20 and all(29471 <= port <= 29800 for port in ports), ports


def test_a_value_the_kernel_refuses_names_the_sysctl(netns: str) -> None:
    with pytest.raises(OSError, match=r"sysctl net.ipv4.ip_local_port_range='2000 1000'"):
        write_in_netns(netns, [("net.ipv4.ip_local_port_range", "2000 1000")])
    with pytest.raises(OSError, match="joining network namespace"):
        write_in_netns("eplb-test-missing", [("net.ipv4.tcp_syncookies", "1")])
