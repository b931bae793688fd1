"""Pod objects in the (local) Kubernetes API for local pods, as the kubelet would report them."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from eplb_operator.controller.endpoints import PodEndpoint
from eplb_sidecar.launch import LocalGroup, LocalPod


def _call(url: str, method: str, body: Any, content_type: str = "application/json") -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": content_type, "Accept": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


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
    base = f"{api_url}/api/v1/namespaces/{namespace}/pods"
    created = _call(base, "POST", pod_manifest(pod, app, group))
    _call(
        f"{base}/{pod.name}/status", "PATCH",
        {"status": {"phase": "Running", "podIP": "127.0.0.1"}}, "application/merge-patch+json",
    )  # fmt: skip
    return str(created["metadata"]["uid"])


def delete_pod(api_url: str, namespace: str, name: str) -> None:
    request = urllib.request.Request(
        f"{api_url}/api/v1/namespaces/{namespace}/pods/{name}", method="DELETE"
    )
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise


def publish_group(api_url: str, namespace: str, group: LocalGroup, app: str) -> None:
    for pod in group.pods:
        publish_pod(api_url, namespace, pod, app, group.config.group)


def publish_token(api_url: str, namespace: str, name: str, token: str) -> None:
    _call(
        f"{api_url}/api/v1/namespaces/{namespace}/secrets", "POST",
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
