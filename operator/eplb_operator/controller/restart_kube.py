"""The Kubernetes reads and writes of Restart rollouts (beside :mod:`.kube`, which has the
rest): serving workloads (get, and a patch of their pod template) and the ConfigMaps holding
the engines' start-up files (get, create, delete)."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from eplb_operator.controller.kube import ApiException, _plain, api_client
from eplb_operator.controller.restart_decide import REVISION_ANNOTATION
from eplb_operator.controller.restart_files import VOLUME
from eplb_operator.controller.restart_pods import LEADER_WORKER_SET

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"


async def get_workload(namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    """The StatefulSet, Deployment or LeaderWorkerSet ``name``, or None when there is none."""
    async with await api_client() as api:
        if kind == LEADER_WORKER_SET:
            custom = client.CustomObjectsApi(api)
            try:
                found = await custom.get_namespaced_custom_object(
                    LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, name
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
            return dict(found)
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
    namespace: str, kind: str, name: str, number: int, config_map: str,
    partition: int | None = None,
) -> None:  # fmt: skip
    """Point the pod template of workload ``name`` at revision ``number``: its annotation
    and the ConfigMap of its ``eplb-placement`` volume (volumes merge by name).  The
    workload's controller then rolls its pods by its own update strategy; a LeaderWorkerSet
    only its groups from ``partition`` up (set in the same write)."""
    if kind == LEADER_WORKER_SET:
        assert partition is not None
        await _stamp_leader_worker_set(namespace, name, number, config_map, partition)
        return
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


async def _stamp_leader_worker_set(
    namespace: str, name: str, number: int, config_map: str, partition: int
) -> None:
    """A LeaderWorkerSet is a custom resource: no strategic merge, so its templates' volume
    lists are written whole, on the resourceVersion read (a concurrent change is a 409, and
    the next pass reads again).  Leader and worker templates and the partition go in one
    write, so the LWS controller never sees the new templates with a lower partition."""
    workload = await get_workload(namespace, LEADER_WORKER_SET, name)
    if workload is None:
        raise ApiException(status=404, reason=f"LeaderWorkerSet {name} not found")
    templates = workload["spec"]["leaderWorkerTemplate"]
    patch: dict[str, Any] = {}
    for key in ("leaderTemplate", "workerTemplate"):
        template = templates.get(key)
        if template is None:
            continue
        volumes = [
            {"name": VOLUME, "configMap": {**volume.get("configMap", {}), "name": config_map}}
            if volume.get("name") == VOLUME else volume
            for volume in (template.get("spec") or {}).get("volumes") or []
        ]  # fmt: skip
        patch[key] = {
            "metadata": {"annotations": {REVISION_ANNOTATION: str(number)}},
            "spec": {"volumes": volumes},
        }
    body = {
        "metadata": {"resourceVersion": workload["metadata"]["resourceVersion"]},
        "spec": {
            "leaderWorkerTemplate": patch,
            "rolloutStrategy": {"rollingUpdateConfiguration": {"partition": partition}},
        },
    }
    await _patch_leader_worker_set(namespace, name, body)


async def set_lws_partition(namespace: str, name: str, partition: int) -> None:
    await _patch_leader_worker_set(
        namespace, name,
        {"spec": {"rolloutStrategy": {"rollingUpdateConfiguration": {"partition": partition}}}},
    )  # fmt: skip


async def _patch_leader_worker_set(namespace: str, name: str, body: dict[str, Any]) -> None:
    async with await api_client() as api:
        custom = client.CustomObjectsApi(api)
        await custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
            LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, name, body, _content_type=MERGE_PATCH
        )


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
