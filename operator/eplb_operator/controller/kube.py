"""The few Kubernetes reads the operator makes, through kubernetes_asyncio."""

from __future__ import annotations

import os
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException


async def api_client() -> client.ApiClient:
    """A client for the cluster we run in, or the one KUBECONFIG names."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        await config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    return client.ApiClient(configuration=configuration)


async def list_pods(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """Pods of ``namespace`` matching ``label_selector``, as plain dicts."""
    async with await api_client() as api:
        core = client.CoreV1Api(api)
        pods = await core.list_namespaced_pod(namespace, label_selector=label_selector)
        return [api.sanitize_for_serialization(pod) for pod in pods.items]
