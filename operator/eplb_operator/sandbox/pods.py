"""Pod objects in the (local) Kubernetes API for local pods, as the kubelet would report them."""

from __future__ import annotations

import base64
from typing import Any

from eplb_operator.controller.endpoints import PodEndpoint
from eplb_operator.sandbox.api import Api
from eplb_sidecar.launch import LocalGroup, LocalPod


def pod_manifest(pod: LocalPod, app: str, group: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "labels": {"app": app, "eplb.io/group": group, "eplb.io/rank": str(pod.rank)},
            "annotations": {
                "eplb.io/control-port": str(pod.control_port),
                "eplb.io/metrics-port": str(pod.metrics_port),
                "eplb.io/transfer-port": str(pod.transfer_port),
            },
        },
        "spec": {"containers": [{"name": "engine", "image": "reference-engine"},
                                {"name": "eplb-sidecar", "image": "eplb-sidecar"}]},
    }  # fmt: skip


def publish_pod(api_url: str, namespace: str, pod: LocalPod, app: str, group: str) -> str:
    """Create the Pod object and report it running at 127.0.0.1; returns its UID."""
    api, base = Api(api_url), f"/api/v1/namespaces/{namespace}/pods"
    created = api.checked("POST", base, pod_manifest(pod, app, group))
    api.checked(
        "PATCH", f"{base}/{pod.name}/status",
        {"status": {"phase": "Running", "podIP": "127.0.0.1"}}, "application/merge-patch+json",
    )  # fmt: skip
    return str(created["metadata"]["uid"])


def delete_pod(api_url: str, namespace: str, name: str) -> None:
    reply = Api(api_url).delete(f"/api/v1/namespaces/{namespace}/pods/{name}")
    if reply.code not in (200, 202, 404):
        raise RuntimeError(f"deleting pod {name}: {reply.code} {reply.body}")


def publish_group(api_url: str, namespace: str, group: LocalGroup, app: str) -> None:
    for pod in group.pods:
        publish_pod(api_url, namespace, pod, app, group.config.group)


def publish_token(api_url: str, namespace: str, name: str, token: str) -> None:
    Api(api_url).checked(
        "POST", f"/api/v1/namespaces/{namespace}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
         "data": {"token": base64.b64encode(token.encode()).decode()}},
    )  # fmt: skip


def local_endpoints(group: LocalGroup) -> dict[str, dict[int, PodEndpoint]]:
    """The operator's view of a local group's pods, without Pod objects (for benchmarks)."""
    return {
        group.config.group: {
            pod.rank: PodEndpoint(
                name=pod.name,
                uid=pod.name,
                group=group.config.group,
                rank=pod.rank,
                host="127.0.0.1",
                control_port=pod.control_port,
                metrics_port=pod.metrics_port,
                transfer_port=pod.transfer_port,
            )
            for pod in group.pods
        }
    }
