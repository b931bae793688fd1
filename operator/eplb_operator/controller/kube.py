"""The Kubernetes reads and writes the operator makes, through kubernetes_asyncio.

Every verb on every resource the operator touches is here (kopf's own watching, finalizers,
annotations and Events aside), so its RBAC can be read off one file.  ``api_client`` is the
project's one Kubernetes client: the local tooling's synchronous facade
(``eplb_local.kube.api``) runs one too, configured by the same ``load_configuration``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["ApiException"]
from kubernetes_asyncio.config.config_exception import ConfigException

from eplb_operator import __version__
from eplb_operator.api.v1alpha1 import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
USER_AGENT = f"eplb-operator/{__version__}"
REVISION_LABEL = "eplb.io/placement"


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server's URL from a pod's service environment (``KUBERNETES_SERVICE_HOST``
    and ``_PORT``), as client-go and kubernetes_asyncio take it; None outside a pod.  kopf's
    own service-account login names ``kubernetes.default.svc:443`` instead, which differs
    where the environment points elsewhere (a proxy in front of the server)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


async def load_configuration(kubeconfig: Path | None = None) -> client.Configuration:
    """Where the API server is and who we are, for every Kubernetes client of the project:
    the kubeconfig at ``kubeconfig`` when given, else the pod we run in (its ServiceAccount),
    else the kubeconfig KUBECONFIG names.  kubernetes_asyncio's loaders read the CA, client
    certificates and tokens (``token`` or ``tokenFile``)."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration
        except ConfigException:
            pass
    await config.load_kube_config(
        config_file=os.environ.get("KUBECONFIG") if kubeconfig is None else str(kubeconfig),
        client_configuration=configuration,
    )
    # A tokenFile is sent as it is read, and one ending in a newline (as `echo > file` and
    # many secret tools write it) makes an HTTP header aiohttp refuses; client-go trims it.
    token = configuration.api_key.get("BearerToken")
    if isinstance(token, str):
        configuration.api_key["BearerToken"] = token.strip()
    return configuration


async def api_client(
    kubeconfig: Path | None = None, user_agent: str = USER_AGENT
) -> client.ApiClient:
    """A client for ``load_configuration(kubeconfig)``, naming itself ``user_agent`` in the API
    server's audit log."""
    api = client.ApiClient(configuration=await load_configuration(kubeconfig))
    api.user_agent = user_agent
    return api


def _plain(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    return dict(api.sanitize_for_serialization(obj))


async def list_pods(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """Pods of ``namespace`` matching ``label_selector``, as plain dicts."""
    async with await api_client() as api:
        pods = await client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=label_selector
        )
        return [_plain(api, pod) for pod in pods.items]


async def get_pod(namespace: str, name: str) -> dict[str, Any] | None:
    async with await api_client() as api:
        try:
            return _plain(api, await client.CoreV1Api(api).read_namespaced_pod(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise


async def read_config_map_key(namespace: str, name: str, key: str) -> str:
    async with await api_client() as api:
        config_map = await client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
        data = config_map.data or {}
        if key not in data:
            raise KeyError(f"ConfigMap {name} has no key {key!r}")
        return str(data[key])


async def get_placement(namespace: str, name: str) -> dict[str, Any] | None:
    async with await api_client() as api:
        try:
            obj = await client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(obj)


async def remove_placement_finalizer(namespace: str, name: str, finalizer: str) -> None:
    """Take ``finalizer`` off an ExpertPlacement (one already gone: nothing to do).  The
    resourceVersion makes it a compare-and-swap: a concurrent change is a 409, not lost."""
    body = await get_placement(namespace, name)
    if body is None:
        return
    meta = body["metadata"]
    finalizers = meta.get("finalizers") or []
    if finalizer not in finalizers:
        return
    patch = {
        "metadata": {
            "finalizers": [f for f in finalizers if f != finalizer],
            "resourceVersion": meta["resourceVersion"],
        }
    }
    async with await api_client() as api:
        await client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            patch,
            _content_type=MERGE_PATCH,  # type: ignore[call-arg]
        )


async def update_placement_status(
    namespace: str,
    name: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    attempts: int = 5,
) -> dict[str, Any] | None:
    """Merge ``change(current object)`` into the status, guarded by resourceVersion.

    A 409 (someone wrote in between) re-reads the object and recomputes the change, so
    conditions are always derived from the latest status.  None when the object is gone.
    """
    for attempt in range(attempts):
        current = await get_placement(namespace, name)
        if current is None:
            return None
        body = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "status": change(current),
        }
        async with await api_client() as api:
            try:
                return dict(
                    await client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        name,
                        body,
                        _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                    )
                )
            except ApiException as error:
                if error.status != 409 or attempt == attempts - 1:
                    raise
    return None


async def list_revisions(namespace: str, placement: str) -> list[dict[str, Any]]:
    """ControllerRevisions of ``placement``, oldest first."""
    async with await api_client() as api:
        found = await client.AppsV1Api(api).list_namespaced_controller_revision(
            namespace, label_selector=f"{REVISION_LABEL}={placement}"
        )
        items = [_plain(api, item) for item in found.items]
    return sorted(items, key=lambda r: int(r.get("revision", 0)))


async def create_revision(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    async with await api_client() as api:
        apps = client.AppsV1Api(api)
        # The client serializes a plain dict as it is; no need to build the model object.
        created = await apps.create_namespaced_controller_revision(namespace, body)  # type: ignore[arg-type]
        return _plain(api, created)


async def delete_revision(namespace: str, name: str) -> None:
    async with await api_client() as api:
        try:
            await client.AppsV1Api(api).delete_namespaced_controller_revision(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
