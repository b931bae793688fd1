"""A pod network on this machine: one network namespace per pod, routed through the host.

Each cluster takes a /24 of 10.244.0.0/16 (``PodNetwork.claim``): the host side is
``.1``, an address of the host's loopback interface that the API server binds to, and
each pod gets the next free address on ``eth0`` of its own network namespace, joined to
the host by a veth pair with a /32 route each way (the point-to-point layout Calico uses,
so no bridge is needed). Pods thus bind ``0.0.0.0`` and fixed ports as in any cluster,
talk to each other and to the API server at their addresses, and keep ``localhost`` to
themselves. Forwarding between pods needs ``net.ipv4.ip_forward=1``, which the node sets.

Names carry the subnet's index, so clusters of several checkouts on one machine never meet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERNET = ipaddress.IPv4Network("10.244.0.0/16")
CLAIMS = Path("/run/eplb-local/subnets")
NETNS_DIR = Path("/run/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PodNetwork:
    index: int  # which /24 of the supernet
    used: set[int] = field(default_factory=set)
    next_host: int = 2

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        subnet = list(SUPERNET.subnets(new_prefix=24))[self.index]
        assert isinstance(subnet, ipaddress.IPv4Network)
        return subnet

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    # -- the node's side ------------------------------------------------------------------
    @classmethod
    def claim(cls, owner_pid: int) -> PodNetwork:
        """Take a /24 no live cluster on this machine holds (a claim file per subnet)."""
        CLAIMS.mkdir(parents=True, exist_ok=True)
        for index in range(1, 256):
            claim = CLAIMS / str(index)
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = int(claim.read_text() or "0")
                except (OSError, ValueError):
                    holder = 0
                if holder and _alive(holder):
                    continue
                if not holder and _seconds_since_written(claim) < 10:
                    continue  # just created: its owner writes its pid next
                network = cls(index)
                network.teardown()  # a dead cluster's leftovers
                claim.unlink(missing_ok=True)
                try:
                    fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    continue
            os.write(fd, str(owner_pid).encode())
            os.close(fd)
            return cls(index)
        raise RuntimeError("no free pod subnet in 10.244.0.0/16")

    def set_owner(self, pid: int) -> None:
        (CLAIMS / str(self.index)).write_text(str(pid))

    def setup(self) -> None:
        """The host's address of this network (on ``lo``: no dummy links in every kernel);
        forwarding on, for traffic from pod to pod."""
        _ip("addr", "replace", f"{self.gateway}/32", "dev", "lo")
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")

    def record(self, pids: list[int]) -> None:
        """The cluster's own processes, for whoever reclaims this subnet after a crash."""
        (CLAIMS / f"{self.index}.pids").write_text(" ".join(map(str, pids)))

    def teardown(self) -> None:
        """Remove the network and stop what a dead cluster left running on it: its
        recorded processes, and every process still inside a pod's namespace."""
        pids = CLAIMS / f"{self.index}.pids"
        if pids.exists():
            for pid in map(int, pids.read_text().split()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            pids.unlink()
        prefix = f"eplb{self.index}-"
        if NETNS_DIR.is_dir():
            for netns in NETNS_DIR.iterdir():
                if netns.name.startswith(prefix):
                    inside = _ip("netns", "pids", netns.name, check=False).stdout.split()
                    for pid in map(int, inside):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)
                    _ip("netns", "del", netns.name, check=False)
        _ip("addr", "del", f"{self.gateway}/32", "dev", "lo", check=False)
        (CLAIMS / str(self.index)).unlink(missing_ok=True)

    # -- pods -----------------------------------------------------------------------------
    def add_pod(self) -> tuple[str, str]:
        """A namespace with ``eth0`` at a fresh address; returns (address, namespace name).

        Addresses go round-robin, so a new pod does not take one a pod just left."""
        for _ in range(253):
            host = self.next_host
            self.next_host = 2 + (self.next_host - 1) % 253
            if host not in self.used:
                break
        else:
            raise RuntimeError(f"no addresses left in {self.subnet}")
        self.used.add(host)
        address = str(self.subnet.network_address + host)
        netns, veth = f"eplb{self.index}-{host}", f"ve{self.index}-{host}"
        try:
            _ip("netns", "add", netns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("addr", "add", f"{self.gateway}/32", "dev", veth)
            _ip("link", "set", veth, "up")
            _ip("route", "replace", f"{address}/32", "dev", veth)
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "addr", "add", f"{address}/32", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "route", "add", f"{self.gateway}/32", "dev", "eth0")
            _ip("-n", netns, "route", "add", "default", "via", self.gateway, "dev", "eth0")
        except RuntimeError:
            self.remove_pod(address, netns)
            raise
        return address, netns

    def remove_pod(self, address: str, netns: str) -> None:
        _ip("netns", "del", netns, check=False)  # takes eth0, and with it the veth pair
        self.used.discard(int(ipaddress.ip_address(address)) - int(self.subnet.network_address))


def _seconds_since_written(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")
