"""The local node agent: a Node object and a kubelet's pod lifecycle, on this machine.

It registers the Node ``eplb-local-node`` (renewing its Lease), binds pods that name no
node (there is no scheduler), and runs every pod bound to it (``PodRuntime``): a network
namespace of its own (``network.py``), volumes, containers as local processes in their own
mount namespaces, probes, restarts, status. A deleted pod's containers get SIGTERM, SIGKILL
after the grace period, then the Pod object is removed.

Runs as root (network and mount namespaces, bind mounts, the containers' users).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eplb_local.kube.api import Api
from eplb_local.kube.binaries import KUBERNETES_VERSION
from eplb_local.node.events import record_event
from eplb_local.node.network import PodNetwork
from eplb_local.node.runtime import PodRuntime, rfc3339
from eplb_local.node.sysctls import FORBIDDEN_REASON, forbidden, kernel_version

log = logging.getLogger("eplb-local-node")

NODE_NAME = "eplb-local-node"
SYNC_SECONDS = 0.25
LEASE_SECONDS = 40


class NodeAgent:
    def __init__(
        self,
        api: Api,
        root: Path,
        apiserver_port: int,
        network: PodNetwork,
        node_name: str = NODE_NAME,
        capacity: dict[str, str] | None = None,
    ) -> None:
        self.api = api
        self.root = root
        self.node_name = node_name
        self.capacity = capacity or {"cpu": "64", "memory": "512Gi", "pods": "250"}
        self.network = network
        self.pods: dict[str, PodRuntime] = {}
        self.reported: dict[str, str] = {}  # uid → the status JSON last written
        self.rejected: set[str] = set()  # uids refused at admission, their Event written
        self.kernel = kernel_version()
        self.probes = ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")
        self.lease_renewed = 0.0
        # What every container's environment starts with (the image's ENV would add to it).
        self.service_env = {
            "HOME": "/",  # as the kubelet sets it for a user without a home directory
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "KUBERNETES_SERVICE_HOST": network.gateway,
            "KUBERNETES_SERVICE_PORT": str(apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(apiserver_port),
            "KUBERNETES_PORT": f"tcp://{network.gateway}:{apiserver_port}",
        }
        # What a container process needs that a volume could shadow or a closed directory
        # (/root is 0700) could hide from its user: the interpreter and the project.
        repository = Path(__file__).resolve().parents[3]
        self.keep_paths = sorted(
            {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, repository)}
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.register()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.sync()
                except Exception:  # one bad pass (an API hiccup) must not end the node
                    log.exception("sync failed")
                stop.wait(max(0.0, SYNC_SECONDS - (time.monotonic() - started)))
        finally:
            self.shutdown()

    def sync(self) -> None:
        self.renew_lease()
        reply = self.api.get("/api/v1/pods")
        if reply.code != 200:
            log.warning("listing pods: %s %s", reply.code, reply.body)
            return
        seen: set[str] = set()
        for pod in reply.body["items"]:
            spec, meta = pod["spec"], pod["metadata"]
            if not spec.get("nodeName"):
                if "deletionTimestamp" not in meta:
                    self.bind(pod)
                continue
            if spec["nodeName"] != self.node_name:
                continue
            seen.add(meta["uid"])
            self.sync_pod(pod)
        self.rejected &= seen
        for uid in list(self.pods):
            if uid not in seen:  # force-deleted: nothing to report to, just stop
                runtime = self.pods.pop(uid)
                runtime.kill_all()
                self.forget(runtime)

    def sync_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        runtime = self.pods.get(uid)
        if runtime is None:
            if "deletionTimestamp" in meta:
                self.finish_delete(pod)
                return
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            refusal = forbidden(pod, self.kernel)
            if refusal is not None:
                self.reject(pod, FORBIDDEN_REASON, refusal)
                return
            runtime = self.admit(pod)
        runtime.pod = pod
        if "deletionTimestamp" in meta:
            runtime.begin_stop(float(meta.get("deletionGracePeriodSeconds") or 0))
            runtime.tick()
            if runtime.stopped:
                self.pods.pop(uid)
                self.forget(runtime)
                self.finish_delete(pod)
            return
        runtime.tick()
        self.report(runtime)

    # -- pods ------------------------------------------------------------------------------
    def bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if pod["spec"].get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        body = {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }  # fmt: skip
        reply = self.api.post(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body
        )
        if reply.code not in (201, 409):
            log.warning("binding %s: %s %s", meta["name"], reply.code, reply.body)

    def admit(self, pod: dict[str, Any]) -> PodRuntime:
        meta = pod["metadata"]
        pod_dir = self.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        pod_dir.chmod(0o711)
        ip, netns = self.network.add_pod()
        runtime = PodRuntime(
            self.api, pod, pod_dir, ip, netns, self.service_env, self.keep_paths, self.probes
        )
        (pod_dir / "pod.json").write_text(
            json.dumps({"uid": meta["uid"], "ip": ip, "netns": netns})
        )
        self.pods[meta["uid"]] = runtime
        log.info("pod %s/%s admitted at %s", meta["namespace"], meta["name"], ip)
        return runtime

    def reject(self, pod: dict[str, Any], reason: str, message: str) -> None:
        """The kubelet's ``rejectPod``: a Warning Event, and the pod Failed without running
        (its controller, if any, makes a new one)."""
        meta = pod["metadata"]
        if meta["uid"] not in self.rejected:
            log.warning("pod %s/%s rejected: %s", meta["namespace"], meta["name"], message)
            record_event(self.api, pod, "Warning", reason, message)
            self.rejected.add(meta["uid"])
        status = {"phase": "Failed", "reason": reason, "message": f"Pod was rejected: {message}"}
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        body = {"metadata": {"uid": meta["uid"]}, "status": status}
        reply = self.api.call("PATCH", path, body, "application/merge-patch+json")
        if reply.code not in (200, 404):  # not written: the next pass tries again
            log.warning("status of %s: %s %s", meta["name"], reply.code, reply.body)

    def report(self, runtime: PodRuntime) -> None:
        status = runtime.status()
        encoded = json.dumps(status, sort_keys=True)
        if self.reported.get(runtime.uid) == encoded:
            return
        meta = runtime.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        previous = {c["type"]: c for c in (runtime.pod.get("status") or {}).get("conditions", [])}
        for condition in status["conditions"]:  # keep transition times of unchanged conditions
            old = previous.get(condition["type"]) or {}
            keep = old.get("status") == condition["status"]
            condition["lastTransitionTime"] = old.get("lastTransitionTime") if keep else rfc3339()
        body = {"metadata": {"uid": meta["uid"]}, "status": status}
        reply = self.api.call("PATCH", path, body, "application/merge-patch+json")
        if reply.code == 200:
            self.reported[runtime.uid] = encoded
            runtime.pod = reply.body
        elif reply.code != 404:
            log.warning("status of %s: %s %s", meta["name"], reply.code, reply.body)

    def finish_delete(self, pod: dict[str, Any]) -> None:
        """Remove the Pod object once its containers are gone (grace period 0, same uid)."""
        meta = pod["metadata"]
        reply = self.api.call(
            "DELETE",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
             "preconditions": {"uid": meta["uid"]}},
        )  # fmt: skip
        if reply.code not in (200, 404, 409):
            log.warning("deleting %s: %s %s", meta["name"], reply.code, reply.body)

    def forget(self, runtime: PodRuntime) -> None:
        runtime.cleanup()
        self.network.remove_pod(runtime.ip, runtime.netns)
        self.reported.pop(runtime.uid, None)

    def shutdown(self) -> None:
        for runtime in self.pods.values():
            runtime.begin_stop(5.0)
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline and not all(r.stopped for r in self.pods.values()):
            for runtime in self.pods.values():
                runtime.tick()
            time.sleep(0.1)
        for runtime in self.pods.values():
            runtime.kill_all()
            self.forget(runtime)
        self.probes.shutdown(wait=False, cancel_futures=True)

    # -- the node ----------------------------------------------------------------------------
    def register(self) -> None:
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {
                "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "eplb.io/local-node": "true",
            }},
        }  # fmt: skip
        reply = self.api.post("/api/v1/nodes", body)
        if reply.code not in (201, 409):
            raise RuntimeError(f"registering node: {reply.code} {reply.body}")
        now = rfc3339()
        status = {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "addresses": [{"type": "InternalIP", "address": self.network.gateway},
                          {"type": "Hostname", "address": self.node_name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "eplb local node agent is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": f"{KUBERNETES_VERSION}-eplb-local",
                         "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "eplb-local://processes",
                         "kernelVersion": os.uname().release, "osImage": "local",
                         "machineID": "", "systemUUID": "", "bootID": "",
                         "kubeProxyVersion": ""},
        }  # fmt: skip
        self.api.checked("PATCH", f"/api/v1/nodes/{self.node_name}/status", {"status": status},
                         "application/merge-patch+json")  # fmt: skip

    def renew_lease(self) -> None:
        moment = time.monotonic()
        if moment - self.lease_renewed < LEASE_SECONDS / 4:
            return
        self.lease_renewed = moment
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        renew = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": renew}  # fmt: skip
        reply = self.api.call("PATCH", path, {"spec": spec}, "application/merge-patch+json")
        if reply.code == 404:
            self.api.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {"metadata": {"name": self.node_name}, "spec": spec},
            )
