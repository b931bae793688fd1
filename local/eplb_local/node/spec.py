"""From a Pod object to what the node runs: argv, environment, mounts, identity, probes.

Pure functions of the Pod and of a lookup for ConfigMap/Secret keys, so the rules a kubelet
applies (``$(VAR)`` expansion, downward API fields, securityContext merging, the image's
ENTRYPOINT when a container names no command) are tested without starting anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eplb_local.node.images import local_image

# (kind "ConfigMap" | "Secret", name, key) → value, or None when the object or key is missing.
Lookup = Callable[[str, str, str], "str | None"]
# (kind, name) → the whole data map, or None when the object is missing (for envFrom).
LookupAll = Callable[[str, str], "dict[str, str] | None"]


class ContainerConfigError(ValueError):
    """The container cannot start as specified (the kubelet's CreateContainerConfigError)."""


@dataclass(frozen=True)
class Mount:
    volume: str
    target: str  # the container's mountPath
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    working_dir: str | None
    uid: int
    gid: int
    groups: list[int]
    ports: dict[str, int]  # named container ports, for probes that name a port
    readiness: dict[str, Any] | None = None
    liveness: dict[str, Any] | None = None
    startup: dict[str, Any] | None = None
    restart_always: bool = True  # an init container with restartPolicy Always (a sidecar)
    extra: dict[str, Any] = field(default_factory=dict)


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``, and
    references to undefined names stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: dict[str, Any], path: str) -> str:
    """A downward-API ``fieldRef.fieldPath`` of ``pod``."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    if path == "status.podIPs":
        return ",".join(ip["ip"] for ip in status.get("podIPs", []))
    match = _SUBSCRIPT.match(path)
    if match:
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef {path!r}")


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    lookup: Lookup,
    lookup_all: LookupAll,
    service_env: dict[str, str],
) -> dict[str, str]:
    """The environment a container starts with: the service variables, then envFrom, then
    env in order (later entries may refer to earlier ones with ``$(VAR)``)."""
    env = dict(service_env)
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            data = lookup_all(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f"{kind.lower()} {ref['name']!r} not found")
            env.update({prefix + key: value for key, value in data.items()})
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable or "valueFrom" not in variable:
            env[name] = expand(str(variable.get("value", "")), env)
            continue
        source = variable["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
            continue
        for kind, ref_key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            value = lookup(kind, ref["name"], ref["key"])
            if value is None and not ref.get("optional"):
                raise ContainerConfigError(
                    f"{kind.lower()} {ref['name']!r} has no key {ref['key']!r} (env {name})"
                )
            if value is not None:
                env[name] = value
            break
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
    return env


def container_argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """``command`` + ``args``; without a command, the image's ENTRYPOINT + (``args`` or
    its CMD); expanded."""
    command, args = container.get("command"), container.get("args")
    if not command:
        image = local_image(container.get("image", ""))
        if image is None:
            raise ContainerConfigError(
                f"image {container.get('image')!r} is not known to the local node: set the "
                "container's command"
            )
        command, args = image.entrypoint, args if args else image.cmd
    return [expand(str(part), env) for part in [*command, *(args or [])]]


def security_identity(
    pod_context: dict[str, Any], container_context: dict[str, Any], image: str
) -> tuple[int, int, list[int]]:
    """(uid, gid, supplemental groups): the container's securityContext over the pod's over
    the image's USER (root for images the node does not know); fsGroup is a supplemental
    group, as the kubelet adds it."""
    known = local_image(image)
    image_uid, image_gid = known.user if known else (0, 0)
    uid = int(container_context.get("runAsUser", pod_context.get("runAsUser", image_uid)))
    gid = int(container_context.get("runAsGroup", pod_context.get("runAsGroup", image_gid)))
    groups = [int(g) for g in pod_context.get("supplementalGroups", [])]
    if "fsGroup" in pod_context:
        groups.append(int(pod_context["fsGroup"]))
    if container_context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) and uid == 0:
        raise ContainerConfigError("container has runAsNonRoot and would run as root")
    return uid, gid, groups


def plan_container(
    pod: dict[str, Any],
    container: dict[str, Any],
    lookup: Lookup,
    lookup_all: LookupAll,
    service_env: dict[str, str],
    restart_always: bool = True,
) -> ContainerPlan:
    env = container_env(pod, container, lookup, lookup_all, service_env)
    uid, gid, groups = security_identity(
        pod["spec"].get("securityContext") or {},
        container.get("securityContext") or {},
        container.get("image", ""),
    )
    mounts = [
        Mount(m["name"], m["mountPath"], bool(m.get("readOnly", False)), m.get("subPath", ""))
        for m in container.get("volumeMounts", [])
    ]
    ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports", []) if "name" in p}
    return ContainerPlan(
        name=container["name"],
        argv=container_argv(container, env),
        env=env,
        mounts=mounts,
        working_dir=container.get("workingDir"),
        uid=uid,
        gid=gid,
        groups=groups,
        ports=ports,
        readiness=container.get("readinessProbe"),
        liveness=container.get("livenessProbe"),
        startup=container.get("startupProbe"),
        restart_always=restart_always,
    )
