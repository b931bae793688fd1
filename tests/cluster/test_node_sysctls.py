"""The local node applies a pod's safe sysctls in the pod's network namespace before its
containers start, and rejects a pod that asks for an unsafe one, as a kubelet does."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from eplb_local.kube.api import Api
from eplb_local.world import LocalKube
from tests.cluster.conftest import eventually

# Prints what the container sees, then binds a socket to port 0 (an ephemeral port).
REPORT = """
import socket, time
print(open('/proc/sys/net/ipv4/ip_local_port_range').read().split(), flush=True)
print(open('/proc/sys/net/ipv4/tcp_keepalive_time').read().strip(), flush=True)
held = socket.socket(); held.bind(('', 0)); print(held.getsockname()[1], flush=True)
time.sleep(3600)
"""


def pod(name: str, sysctls: list[dict[str, str]]) -> dict[str, Any]:
    container = {"name": "report", "image": "local/wait", "command": ["python3", "-c", REPORT]}
    return {"metadata": {"name": name},
            "spec": {"securityContext": {"sysctls": sysctls}, "containers": [container],
                     "terminationGracePeriodSeconds": 0}}  # fmt: skip


def node_dir(kube: LocalKube, namespace: str, name: str) -> Path | None:
    found = sorted(kube.node_root.glob(f"pods/{namespace}_{name}_*"))
    return found[0] if found else None


def events_of(api: Api, namespace: str, name: str) -> list[dict[str, Any]]:
    reply = api.get(f"/api/v1/namespaces/{namespace}/events")
    return [e for e in reply.body.get("items", []) if e["involvedObject"]["name"] == name]


def test_safe_sysctls_are_set_in_the_pods_network_namespace(
    kube: LocalKube, api: Api, namespace: str
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    sysctls = [{"name": "net.ipv4.ip_local_port_range", "value": "29471 29800"},
               {"name": "net/ipv4/tcp_keepalive_time", "value": "600"}]  # fmt: skip
    api.checked("POST", pods, pod("ranged", sysctls))
    log: list[str] = []

    def reported() -> bool:
        where = node_dir(kube, namespace, "ranged")
        path = where / "logs" / "report.log" if where else None
        log[:] = path.read_text().splitlines() if path and path.exists() else []
        return len(log) >= 3

    eventually(reported, 60)
    assert log[0] == "['29471', '29800']" and log[1] == "600", log
    assert 29471 <= int(log[2]) <= 29800, log  # the container's ephemeral port is in range
    # In the pod's own namespace only: the host keeps its range.
    host = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    assert host != ["29471", "29800"]
    where = node_dir(kube, namespace, "ranged")
    assert where is not None
    netns = json.loads((where / "pod.json").read_text())["netns"]
    seen = subprocess.run(["ip", "netns", "exec", netns, "cat",
                           "/proc/sys/net/ipv4/ip_local_port_range"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert seen.split() == ["29471", "29800"]
    status = api.get(f"{pods}/ranged").body["status"]
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["PodReadyToStartContainers"] == "True"


def test_an_unsafe_sysctl_rejects_the_pod_before_anything_runs(
    kube: LocalKube, api: Api, namespace: str
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    cases = {
        "unsafe": ([{"name": "kernel.msgmax", "value": "65536"}],
                   'forbidden sysctl: "kernel.msgmax" not allowlisted'),
        # Safe for the kubelet, but IPC-namespaced, and this node's pods share the host's.
        "host-ipc": ([{"name": "net.ipv4.tcp_syncookies", "value": "1"},
                      {"name": "kernel.shm_rmid_forced", "value": "1"}],
                     'forbidden sysctl: "kernel.shm_rmid_forced" not allowed with host IPC '
                     "enabled"),
    }  # fmt: skip
    for name, (sysctls, _) in cases.items():
        api.checked("POST", pods, pod(name, sysctls))
    for name, (_, message) in cases.items():
        eventually(lambda n=name: api.get(f"{pods}/{n}").body["status"].get("phase") == "Failed")
        status = api.get(f"{pods}/{name}").body["status"]
        assert status["reason"] == "SysctlForbidden"
        assert status["message"] == f"Pod was rejected: {message}"
        assert "podIP" not in status  # no sandbox: no network namespace, no address
        assert node_dir(kube, namespace, name) is None  # nothing of it ran
        eventually(lambda n=name: bool(events_of(api, namespace, n)))
        (event,) = events_of(api, namespace, name)
        assert (event["type"], event["reason"], event["message"]) == (
            "Warning", "SysctlForbidden", message)  # fmt: skip
        assert event["source"]["component"] == "kubelet"


def test_a_value_the_kernel_refuses_keeps_the_pod_from_starting(
    kube: LocalKube, api: Api, namespace: str
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    api.checked("POST", pods, pod("reversed", [{"name": "net.ipv4.ip_local_port_range",
                                                "value": "29800 29471"}]))  # fmt: skip

    def waiting() -> dict[str, Any]:
        statuses = api.get(f"{pods}/reversed").body.get("status", {}).get("containerStatuses")
        return dict(statuses[0]["state"].get("waiting", {})) if statuses else {}

    eventually(lambda: "Failed to create pod sandbox" in waiting().get("message", ""), 60)
    assert waiting()["reason"] == "ContainerCreating"
    assert "net.ipv4.ip_local_port_range='29800 29471'" in waiting()["message"]
    where = node_dir(kube, namespace, "reversed")
    assert where is not None and not (where / "logs" / "report.log").exists()
    eventually(lambda: bool(events_of(api, namespace, "reversed")))
    (event,) = events_of(api, namespace, "reversed")
    assert (event["type"], event["reason"]) == ("Warning", "FailedCreatePodSandBox")
    status = api.get(f"{pods}/reversed").body["status"]
    assert status["phase"] == "Pending"


def test_pod_security_baseline_admits_the_transfer_range_and_not_an_unsafe_sysctl(
    api: Api,
) -> None:
    """The API server's own Pod Security admission (level baseline, which restricted
    includes) allows the sysctl the eplb-sidecar chart sets: serving namespaces that enforce
    it take the transfer range."""
    namespace = f"pss-{uuid.uuid4().hex[:8]}"
    labels = {"pod-security.kubernetes.io/enforce": "baseline"}
    api.checked("POST", "/api/v1/namespaces", {"metadata": {"name": namespace, "labels": labels}})
    try:
        pods = f"/api/v1/namespaces/{namespace}/pods?dryRun=All"
        ranged = pod("ranged", [{"name": "net.ipv4.ip_local_port_range", "value": "29471 29800"}])
        assert api.post(pods, ranged).code == 201
        refused = api.post(pods, pod("unsafe", [{"name": "kernel.msgmax", "value": "65536"}]))
        assert refused.code == 403, refused.body
        assert "kernel.msgmax" in refused.body["message"], refused.body
    finally:
        api.delete(f"/api/v1/namespaces/{namespace}")
