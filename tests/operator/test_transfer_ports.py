"""Peer transfers stay on the ports a NetworkPolicy allows (issue #15): with the serving
pods' net.ipv4.ip_local_port_range set by the eplb-sidecar chart (and applied by the node
in each pod's network namespace, as a kubelet does), a rollout whose experts all cross pods
listens and connects between sidecar pods only on transferPort … transferPortEnd. Read off
the pods' own TCP tables while the rollout runs and after it: gloo's ports would otherwise
come from the kernel's default range (32768-60999)."""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from eplb_local.world import World

from .conftest import (
    CONFIG,
    TRANSFER_PORT_END,
    apply_offline,
    assert_invariants,
    rolled_out,
    served,
    serves,
)

pytestmark = pytest.mark.slow

TRANSFER_PORT = 29470  # the chart's default transferPort
EPHEMERAL = range(TRANSFER_PORT + 1, TRANSFER_PORT_END + 1)
LISTEN = 0x0A  # TCP_LISTEN in /proc/net/tcp's "st" column


@dataclass(frozen=True)
class Socket:
    pod: str
    local: tuple[str, int]
    remote: tuple[str, int]
    state: int


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (tcp) or 32 hex digits and a port (tcp6; a v4-mapped one as v4):
    each 32-bit word is in the kernel's (little-endian) byte order."""
    host, port = hex_address.split(":")
    raw = b"".join(struct.pack("<I", int(host[i : i + 8], 16)) for i in range(0, len(host), 8))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def tcp_sockets(pod: str, pid: int) -> set[Socket]:
    """Every TCP socket of the network namespace ``pid`` is in (its pod's)."""
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:  # restarted between two samples: the next one reads the new pid
            continue
        for line in lines:
            fields = line.split()
            found.add(Socket(pod, _address(fields[1]), _address(fields[2]), int(fields[3], 16)))
    return found


class Sampler:
    """Reads each sidecar's TCP table every few tens of milliseconds, in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.seen: set[Socket] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sockets", daemon=True)

    def sample(self) -> None:
        for pod, pid in self.pids.items():
            self.seen |= tcp_sockets(pod, pid)

    def _run(self) -> None:
        while not self._stop.wait(0.03):
            self.sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # after the rollout: the session's group keeps its connections


def across_pods(start: torch.Tensor) -> torch.Tensor:
    """``[L, P]``: every layer's slots of ``start`` moved 1-3 pods on (one rank per pod):
    every changed slot takes an expert another pod holds."""
    slots = CONFIG.slots_per_rank
    return torch.stack([start[layer].roll((layer % 3 + 1) * slots)
                        for layer in range(CONFIG.layers)])  # fmt: skip


def test_transfers_between_pods_use_only_the_transfer_ports(reused_world: World) -> None:
    world = reused_world  # its serving chart sets transferPortEnd: TRANSFER_PORT_END
    pods = world.pods()
    assert len(pods) == CONFIG.ranks  # one rank per pod: every move crosses pods
    api = world.kube.api_checked()
    objects = {
        pod.name: api.get(f"/api/v1/namespaces/{world.namespace}/pods/{pod.name}").body
        for pod in pods
    }
    # The sysctl as rendered, and as the kernel holds it in each pod's network namespace.
    for pod in pods:
        sysctls = objects[pod.name]["spec"]["securityContext"]["sysctls"]
        assert sysctls == [{"name": "net.ipv4.ip_local_port_range",
                            "value": f"{EPHEMERAL.start} {EPHEMERAL.stop - 1}"}]  # fmt: skip
        netns = json.loads((pod.node_dir / "pod.json").read_text())["netns"]
        held = subprocess.run(["ip", "netns", "exec", netns, "cat",
                               "/proc/sys/net/ipv4/ip_local_port_range"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert held.split() == [str(EPHEMERAL.start), str(EPHEMERAL.stop - 1)]
    pids = {pod.name: world.container_pid(pod.name, "eplb-sidecar") for pod in pods}
    assert None not in pids.values(), pids
    expected = world.probe()
    target = across_pods(served(world))

    with Sampler({name: pid for name, pid in pids.items() if pid is not None}) as sampler:
        apply_offline(world, target)
        world.wait(lambda: rolled_out(world), 180, "the rollout")
    assert serves(world, target)
    assert_invariants(world, expected)

    addresses = {pod.name: pod.ip for pod in pods}
    declared = {
        name: {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        for name, pod in objects.items()
    }
    transfer_ports = {TRANSFER_PORT, *EPHEMERAL}
    listening = [s for s in sampler.seen if s.state == LISTEN]
    between_pods = [
        s for s in sampler.seen
        if s.state != LISTEN and s.local[0] == addresses[s.pod]
        and s.remote[0] in set(addresses.values()) - {addresses[s.pod]}
    ]  # fmt: skip
    # Every port a pod listens on is one it declares (engine, control, metrics, the store's
    # gate) or one of the range: gloo's listener on the pod's address, the gate's loopback
    # forwarder, and the store behind the gate (on loopback).
    stray = [s for s in listening if s.local[1] not in declared[s.pod] | set(EPHEMERAL)]
    assert not stray, stray
    on_pod_address = [s for s in listening if s.local[0] == addresses[s.pod]]
    gloo_listeners = {s.pod for s in on_pod_address if s.local[1] in EPHEMERAL}
    assert len(gloo_listeners) == CONFIG.ranks, listening
    # Between sidecar pods, both ends of every connection are transfer ports.
    outside = [s for s in between_pods if not {s.local[1], s.remote[1]} <= transfer_ports]
    assert not outside, outside
    # Both kinds were seen, so the assertions above had something to hold for: connections
    # to a peer's rendezvous gate, and gloo's pairs (range to range).
    assert any(s.remote[1] == TRANSFER_PORT for s in between_pods), between_pods
    gloo = [s for s in between_pods if s.local[1] in EPHEMERAL and s.remote[1] in EPHEMERAL]
    assert len({s.pod for s in gloo}) == CONFIG.ranks, between_pods
