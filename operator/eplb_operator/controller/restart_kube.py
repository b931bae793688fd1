"""The Kubernetes reads and writes of Restart rollouts (beside :mod:`.kube`, which has the
rest): serving workloads (get, and a strategic-merge patch of their pod template) and the
ConfigMaps holding the engines' start-up files (get, create, delete)."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from eplb_operator.controller.kube import ApiException, _plain, api_client
from eplb_operator.controller.restart_decide import REVISION_ANNOTATION
from eplb_operator.controller.restart_files import VOLUME

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


async def get_workload(namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    """The StatefulSet or Deployment ``name``, or None when there is none."""
    async with await api_client() as api:
        apps = client.AppsV1Api(api)
        read = (
            apps.read_namespaced_stateful_set
            if kind == "StatefulSet"
            else apps.read_namespaced_deployment
        )
        try:
            return _plain(api, await read(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise


async def stamp_workload(
    namespace: str, kind: str, name: str, number: int, config_map: str
) -> None:
    """Point the pod template of workload ``name`` at revision ``number``: its annotation
    and the ConfigMap of its ``eplb-placement`` volume (volumes merge by name).  The
    workload's controller then rolls its pods by its own update strategy."""
    body = {
        "spec": {
            "template": {
                "metadata": {"annotations": {REVISION_ANNOTATION: str(number)}},
                "spec": {"volumes": [{"name": VOLUME, "configMap": {"name": config_map}}]},
            }
        }
    }
    async with await api_client() as api:
        apps = client.AppsV1Api(api)
        patch = (
            apps.patch_namespaced_stateful_set
            if kind == "StatefulSet"
            else apps.patch_namespaced_deployment
        )
        await patch(name, namespace, body, _content_type=STRATEGIC_MERGE_PATCH)  # type: ignore[call-arg]


async def read_config_map(namespace: str, name: str) -> dict[str, str] | None:
    """The data of ConfigMap ``name``, or None when there is none."""
    async with await api_client() as api:
        try:
            found = await client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found.data or {})


async def create_config_map(namespace: str, body: dict[str, Any]) -> None:
    async with await api_client() as api:
        try:
            await client.CoreV1Api(api).create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]
        except ApiException as error:
            if error.status != 409:  # made by an earlier pass: the same revision, the same file
                raise


async def delete_config_map(namespace: str, name: str) -> None:
    async with await api_client() as api:
        try:
            await client.CoreV1Api(api).delete_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
