"""KMock's ``KubernetesEmulator`` with the gaps that matter to an operator closed.

KMock stores objects as plain JSON and merges every write.  A real API server also: stamps
``resourceVersion``, ``uid``, ``generation`` (bumped on spec changes only) and
``creationTimestamp``; answers 409 to a write with a stale ``resourceVersion``; answers 422
to a JSON patch whose ``test`` fails and to an object its CRD rejects (schema and CEL);
honours ``generateName``; keeps the ``status`` subresource apart from the main resource in
both directions; filters lists and watches by label selector; names list kinds; serves
discovery and OpenAPI for the CRDs it is given; and prints Tables for ``kubectl get``.
This subclass does those things; everything else (HTTP, request parsing, watch streams,
object history for assertions) is KMock's own.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock

from eplb_operator.api.validation import apply_defaults, openapi_schema, validate
from eplb_operator.cluster import selectors, tables
from eplb_operator.cluster.access import Access, access_of

_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")


@dataclass
class ResourceType:
    """What the emulator knows of one resource: names, scope, and (for CRDs) the schema."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    schema: dict[str, Any] | None = None
    status_subresource: bool = False
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)


BUILTIN_TYPES = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, short_names=["ns"]),
    ResourceType("", "v1", "events", "Event", short_names=["ev"]),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=["cm"]),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "pods", "Pod", short_names=["po"], status_subresource=True),
    ResourceType("", "v1", "services", "Service", short_names=["svc"]),
    ResourceType("apps", "v1", "controllerrevisions", "ControllerRevision"),
    ResourceType("events.k8s.io", "v1", "events", "Event", short_names=["ev"]),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short_names=["crd", "crds"],
    ),
]


def crd_resource_type(crd: dict[str, Any]) -> ResourceType:
    """The storage version of ``crd`` as a ResourceType."""
    spec = crd["spec"]
    names = spec["names"]
    version = next(v for v in spec["versions"] if v.get("storage"))
    return ResourceType(
        group=spec["group"],
        version=version["name"],
        plural=names["plural"],
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        singular=names.get("singular", names["kind"].lower()),
        short_names=list(names.get("shortNames", [])),
        categories=list(names.get("categories", [])),
        schema=openapi_schema(crd, version["name"]),
        status_subresource="status" in version.get("subresources", {}),
        printer_columns=list(version.get("additionalPrinterColumns", [])),
    )


def _is_put(request: kmock.Request) -> bool:
    return str(request.method).upper().endswith("PUT")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> aiohttp.web.Response:
    """A Kubernetes ``Status`` failure response."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return aiohttp.web.json_response(body, status=code)


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """A Kubernetes API in memory: KMock plus the API-server behaviour operators rely on."""

    _types: dict[tuple[str, str, str], ResourceType] = attrs.field(factory=dict, init=False)
    _resource_version: int = attrs.field(default=0, init=False)
    # (User-Agent, permission) of every request (RBAC is derived from it in tests).
    accesses: set[tuple[str, Access]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource_type in BUILTIN_TYPES:
            self.register(resource_type)

    # -- registration ------------------------------------------------------------------------
    def register(self, resource_type: ResourceType) -> None:
        """Serve ``resource_type``: discovery, storage, and (for CRDs) validation."""
        self._types[resource_type.key] = resource_type
        self.resources[f"{resource_type.api_version}/{resource_type.plural}"] = kmock.ResourceInfo(
            kind=resource_type.kind,
            singular=resource_type.singular or resource_type.kind.lower(),
            namespaced=resource_type.namespaced,
            shortnames=set(resource_type.short_names),
            categories=set(resource_type.categories),
            verbs=set(_VERBS),
            subresources={"status"} if resource_type.status_subresource else set(),
        )

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve the custom resource ``crd`` defines, validated against its schema."""
        self.register(crd_resource_type(crd))

    def next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    # -- dispatch ----------------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        access = access_of(raw_request.method, raw_request.path, dict(raw_request.query))
        if access is not None:
            self.accesses.add((raw_request.headers.get("User-Agent", ""), access))
        # KMock reads /api/v1/namespaces[/{name}] as a namespace prefix and fails: parse it here.
        match = _NAMESPACES_PATH.match(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        method = raw_request.method.upper()
        name = match.group(1)
        params = dict(raw_request.query)
        action: kmock.action | None
        if method == "GET":
            watching = params.get("watch") in ("true", "1")
            action = (
                kmock.action.FETCH
                if name
                else (kmock.action.WATCH if watching else kmock.action.LIST)
            )
        else:
            action = {
                "POST": kmock.action.CREATE,
                "PATCH": kmock.action.UPDATE,
                "PUT": kmock.action.UPDATE,
                "DELETE": kmock.action.DELETE,
            }.get(method)
        request = kmock.Request(
            url=raw_request.url,
            method=raw_request.method,
            params=params,
            headers=dict(raw_request.headers),
            data=data,
            body=body,
            text=body.decode(errors="replace"),
            action=action,
            resource=kmock.resource("", "v1", "namespaces"),
            namespace=None,
            name=name,
            raw_request=raw_request,
        )
        return await self._handle(request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.url.path.startswith("/openapi/"):
            return self._serve_openapi(request)
        action: kmock.action | None = request.action
        if _is_put(request) and request.name:
            action = kmock.action.UPDATE  # KMock does not parse PUT as an update
        if request.resource is None or not request.resource.plural or action is None:
            return await super()._handle(request)  # discovery and anything not a resource
        resource_type = self._type_of(request)
        if resource_type is None:
            return status(404, "NotFound", "the server could not find the requested resource")
        if action == kmock.action.WATCH:
            return await self._watch(request)
        if action == kmock.action.LIST:
            return self._list(request, resource_type)
        if action == kmock.action.FETCH:
            return self._fetch(request, resource_type)
        async with self._lock:
            if action == kmock.action.CREATE:
                return await self._create(request, resource_type)
            if action == kmock.action.UPDATE:
                return await self._update(request, resource_type)
            if action == kmock.action.DELETE:
                return await self._delete(request, resource_type)
        return status(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _type_of(self, request: kmock.Request) -> ResourceType | None:
        resource = request.resource
        if resource is None:
            return None
        return self._types.get(
            (resource.group or "", resource.version or "", resource.plural or "")
        )

    def _key(
        self, request: kmock.Request, resource_type: ResourceType, name: str
    ) -> tuple[Any, str | None, str]:
        return (request.resource, request.namespace if resource_type.namespaced else None, name)

    def _current(self, key: tuple[Any, str | None, str]) -> dict[str, Any] | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _existing(
        self, request: kmock.Request, resource_type: ResourceType
    ) -> tuple[tuple[Any, str | None, str], dict[str, Any]] | aiohttp.web.Response:
        """The named object's key and a copy of it, or the 404 to answer with."""
        key = self._key(request, resource_type, request.name or "")
        current = self._current(key)
        if current is None:
            return self._not_found(resource_type, request.name or "")
        return key, current

    async def _store(
        self, key: tuple[Any, str | None, str], obj: dict[str, Any], event: str
    ) -> None:
        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        await self._buses[key[0]].put({"type": event, "object": copy.deepcopy(obj)})

    def _invalid(
        self, resource_type: ResourceType, obj: dict[str, Any]
    ) -> tuple[dict[str, Any], aiohttp.web.Response | None]:
        """``obj`` with defaults applied, or a 422 naming every violation of the CRD."""
        if resource_type.schema is None:
            return obj, None
        violations = validate(resource_type.schema, obj)
        if not violations:
            return apply_defaults(resource_type.schema, obj), None
        name = obj.get("metadata", {}).get("name", "")
        message = f'{resource_type.kind} "{name}" is invalid: ' + ", ".join(
            f"{v.field}: Invalid value: {v.message}" if v.field else v.message for v in violations
        )
        causes = [
            {"reason": "FieldValueInvalid", "message": v.message, "field": v.field}
            for v in violations
        ]
        details = {
            "name": name,
            "group": resource_type.group,
            "kind": resource_type.kind,
            "causes": causes,
        }
        return obj, status(422, "Invalid", message, details)

    # -- reads -------------------------------------------------------------------------------
    def _selected(
        self, request: kmock.Request, resource_type: ResourceType
    ) -> list[dict[str, Any]]:
        raw_selector = request.params.get("labelSelector", "")
        matches = selectors.parse(raw_selector) if raw_selector else (lambda labels: True)
        found = []
        for (resource, namespace, _), obj in self._objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if resource_type.namespaced and request.namespace not in (None, namespace):
                continue
            if matches(obj.raw.get("metadata", {}).get("labels") or {}):
                found.append(copy.deepcopy(obj.raw))
        return sorted(
            found, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"])
        )

    def _wants_table(self, request: kmock.Request) -> bool:
        return "as=Table" in request.headers.get("Accept", "")

    def _list(self, request: kmock.Request, resource_type: ResourceType) -> aiohttp.web.Response:
        try:
            items = self._selected(request, resource_type)
        except ValueError as error:
            return status(400, "BadRequest", f"unable to parse labelSelector: {error}")
        version = str(self._resource_version)
        if self._wants_table(request):
            return aiohttp.web.json_response(
                tables.table(items, self._columns(resource_type), version)
            )
        return aiohttp.web.json_response(
            {
                "apiVersion": resource_type.api_version,
                "kind": f"{resource_type.kind}List",
                "metadata": {"resourceVersion": version},
                "items": items,
            }
        )

    def _columns(self, resource_type: ResourceType) -> list[dict[str, Any]]:
        columns = resource_type.printer_columns
        if not any(c["jsonPath"] == ".metadata.creationTimestamp" for c in columns):
            columns = [*columns, tables.AGE_COLUMN]
        return columns

    def _fetch(self, request: kmock.Request, resource_type: ResourceType) -> aiohttp.web.Response:
        obj = self._current(self._key(request, resource_type, request.name or ""))
        if obj is None:
            return self._not_found(resource_type, request.name or "")
        if self._wants_table(request):
            return aiohttp.web.json_response(
                tables.table(
                    [obj], self._columns(resource_type), obj["metadata"]["resourceVersion"]
                )
            )
        return aiohttp.web.json_response(obj)

    def _not_found(self, resource_type: ResourceType, name: str) -> aiohttp.web.Response:
        group = f".{resource_type.group}" if resource_type.group else ""
        return status(
            404,
            "NotFound",
            f'{resource_type.plural}{group} "{name}" not found',
            {"name": name, "group": resource_type.group, "kind": resource_type.plural},
        )

    async def _watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Stream events as JSON lines, filtered by namespace and label selector, until
        ``timeoutSeconds`` or the client leaves.

        As in Kubernetes, a watch from ``resourceVersion`` N (from a previous list) gets only
        what changed after N; without one (or "0") it starts with every object as ADDED.
        """
        try:
            raw_selector = request.params.get("labelSelector", "")
            matches = selectors.parse(raw_selector) if raw_selector else (lambda labels: True)
        except ValueError as error:
            return status(400, "BadRequest", f"unable to parse labelSelector: {error}")

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            namespace_ok = request.namespace is None or meta.get("namespace") == request.namespace
            return namespace_ok and matches(meta.get("labels") or {})

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        raw_request = request._raw_request  # KMock keeps the aiohttp request here
        assert raw_request is not None
        await response.prepare(raw_request)
        timeout = float(request.params.get("timeoutSeconds", "0") or 0) or None
        since_text = request.params.get("resourceVersion", "0") or "0"
        since = int(since_text) if since_text.isdigit() else 0
        assert request.resource is not None
        bus = self._buses[request.resource]
        # Mark the bus and copy the objects under the write lock: no event falls between.
        async with self._lock:
            marker = await bus.mark()
            existing = [
                copy.deepcopy(obj.raw)
                for (resource, _, _), obj in self._objects.items()
                if resource == request.resource and not obj.deleted
            ]
        try:
            async with asyncio.timeout(timeout):
                for obj in existing:
                    if wanted(obj) and int(obj["metadata"].get("resourceVersion", "0")) > since:
                        await response.write(
                            json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n"
                        )
                async for event in bus.stream(since=marker):
                    if wanted(event.get("object", {})):
                        await response.write(json.dumps(event).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            await bus.unmark(marker)
        return response

    # -- writes ------------------------------------------------------------------------------
    async def _create(
        self, request: kmock.Request, resource_type: ResourceType
    ) -> aiohttp.web.Response:
        body = request.data
        if not isinstance(body, dict):
            return status(400, "BadRequest", "the body of a create must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
        if not name:
            return status(
                422,
                "Invalid",
                f"{resource_type.kind}: metadata.name or metadata.generateName is required",
            )
        meta["name"] = name
        if resource_type.namespaced:
            meta["namespace"] = request.namespace or meta.get("namespace") or "default"
        key = (request.resource, meta.get("namespace") if resource_type.namespaced else None, name)
        if self._current(key) is not None:
            group = f".{resource_type.group}" if resource_type.group else ""
            return status(
                409, "AlreadyExists", f'{resource_type.plural}{group} "{name}" already exists'
            )
        obj.setdefault("apiVersion", resource_type.api_version)
        obj.setdefault("kind", resource_type.kind)
        if resource_type.status_subresource:
            obj.pop("status", None)  # status is written through its subresource only
        obj, error = self._invalid(resource_type, obj)
        if error is not None:
            return error
        if request.params.get("dryRun"):
            return aiohttp.web.json_response(obj, status=201)
        meta = obj["metadata"]
        meta.pop("deletionTimestamp", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        meta["resourceVersion"] = self.next_resource_version()
        await self._store(key, obj, "ADDED")
        return aiohttp.web.json_response(obj, status=201)

    async def _update(
        self, request: kmock.Request, resource_type: ResourceType
    ) -> aiohttp.web.Response:
        found = self._existing(request, resource_type)
        if isinstance(found, aiohttp.web.Response):
            return found
        key, current = found
        if request.subresource not in (None, "status") or (
            request.subresource == "status" and not resource_type.status_subresource
        ):
            return status(404, "NotFound", f"no subresource {request.subresource!r}")
        body = request.data
        content_type = request.headers.get("Content-Type", "")
        requested_version = None
        if _is_put(request):
            if not isinstance(body, dict):
                return status(400, "BadRequest", "the body of an update must be a JSON object")
            requested_version = body.get("metadata", {}).get("resourceVersion")
            new = copy.deepcopy(body)
        elif "json-patch" in content_type:
            try:
                new = jsonpatch.apply_patch(current, body)
            except jsonpatch.JsonPatchTestFailed as error:
                return status(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: {error}",
                )
            except (
                jsonpatch.JsonPatchException,
                jsonpatch.JsonPointerException,
                TypeError,
            ) as error:
                return status(422, "Invalid", f"invalid JSON patch: {error}")
        else:  # merge, strategic merge and apply patches: merge semantics
            if not isinstance(body, dict):
                return status(400, "BadRequest", "a merge patch must be a JSON object")
            requested_version = body.get("metadata", {}).get("resourceVersion")
            new = merge_patch(current, body)
        if requested_version and requested_version != current["metadata"]["resourceVersion"]:
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource_type.plural} "{request.name}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        new = self._isolate(resource_type, request.subresource, current, new)
        new, invalid = self._invalid(resource_type, new)
        if invalid is not None:
            return invalid
        if new == current:
            return aiohttp.web.json_response(current)  # a no-op write changes nothing
        if request.params.get("dryRun"):
            return aiohttp.web.json_response(new)
        if self._spec_of(new) != self._spec_of(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self.next_resource_version()
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._objects[key].create(new)
            self._objects[key].delete()
            await self._buses[key[0]].put({"type": "DELETED", "object": copy.deepcopy(new)})
            return aiohttp.web.json_response(new)
        await self._store(key, new, "MODIFIED")
        return aiohttp.web.json_response(new)

    @staticmethod
    def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

    @staticmethod
    def _isolate(
        resource_type: ResourceType,
        subresource: str | None,
        current: dict[str, Any],
        new: dict[str, Any],
    ) -> dict[str, Any]:
        """Apply only what this endpoint may change; keep identity fields from ``current``."""
        if resource_type.status_subresource:
            if subresource == "status":
                new = {**current, "status": new.get("status")}
            else:
                new = {**new, "status": current.get("status")}
            if new.get("status") is None:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for immutable in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
        ):
            if immutable in current["metadata"]:
                meta[immutable] = current["metadata"][immutable]
        if current["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = current["metadata"]["deletionTimestamp"]
        return new

    async def _delete(
        self, request: kmock.Request, resource_type: ResourceType
    ) -> aiohttp.web.Response:
        found = self._existing(request, resource_type)
        if isinstance(found, aiohttp.web.Response):
            return found
        key, current = found
        meta = current["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_rfc3339()
                meta["resourceVersion"] = self.next_resource_version()
                await self._store(key, current, "MODIFIED")
            return aiohttp.web.json_response(current)
        meta["resourceVersion"] = self.next_resource_version()
        self._objects[key].delete()
        await self._buses[key[0]].put({"type": "DELETED", "object": copy.deepcopy(current)})
        return aiohttp.web.json_response(current)

    # -- discovery and OpenAPI ---------------------------------------------------------------
    async def _serve_version(self, request: kmock.Request) -> Any:
        listing: Any = await super()._serve_version(request)
        listing["groupVersion"] = listing.get("groupVersion", "").lstrip("/")  # core is "v1"
        for entry in listing.get("resources", []):
            if "/" in entry["name"]:  # subresources carry no short names or categories
                entry["shortNames"], entry["categories"] = [], []
                entry["verbs"] = ["get", "patch", "update"]
        return listing

    def _serve_openapi(self, request: kmock.Request) -> aiohttp.web.Response:
        from eplb_operator.cluster.openapi import document, index

        path = request.url.path
        if path.rstrip("/") == "/openapi/v3":
            return aiohttp.web.json_response(index(list(self._types.values())))
        prefix = "/openapi/v3/"
        if path.startswith(prefix):
            found = document(path[len(prefix) :], list(self._types.values()))
            if found is not None:
                return aiohttp.web.json_response(found)
        return status(404, "NotFound", "the server could not find the requested resource")
