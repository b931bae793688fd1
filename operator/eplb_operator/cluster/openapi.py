"""The OpenAPI v3 documents kubectl reads: one per group-version, with the CRD schemas.

kubectl looks here to learn that the server validates fields itself (the
``fieldValidation`` query parameter) and to find each kind's schema.
"""

from __future__ import annotations

from typing import Any

_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "schema": {"type": "string", "uniqueItems": True},
}


def _group_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def index(resource_types: list[Any]) -> dict[str, Any]:
    paths = {}
    for resource_type in resource_types:
        path = _group_path(resource_type.group, resource_type.version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash=eplb"}
    return {"paths": paths}


def _schema_name(resource_type: Any) -> str:
    group = (
        ".".join(reversed(resource_type.group.split(".")))
        if resource_type.group
        else "io.k8s.api.core"
    )
    return f"{group}.{resource_type.version}.{resource_type.kind}"


def document(path: str, resource_types: list[Any]) -> dict[str, Any] | None:
    chosen = [rt for rt in resource_types if _group_path(rt.group, rt.version) == path]
    if not chosen:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in chosen:
        gvk = [{"group": rt.group, "version": rt.version, "kind": rt.kind}]
        name = _schema_name(rt)
        schema = (
            dict(rt.schema)
            if rt.schema
            else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        )
        schemas[name] = {**schema, "x-kubernetes-group-version-kind": gvk}
        base = (
            f"/{path}/namespaces/{{namespace}}/{rt.plural}"
            if rt.namespaced
            else f"/{path}/{rt.plural}"
        )
        operation = {
            "parameters": [_FIELD_VALIDATION],
            "x-kubernetes-group-version-kind": gvk[0],
            "responses": {
                "200": {
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                    }
                }
            },
        }
        paths[base] = {"post": {**operation, "x-kubernetes-action": "post"}}
        paths[f"{base}/{{name}}"] = {
            "put": {**operation, "x-kubernetes-action": "put"},
            "patch": {**operation, "x-kubernetes-action": "patch"},
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
