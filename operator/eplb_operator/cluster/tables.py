"""Server-side printing: the ``Table`` kubectl asks for, from a CRD's printer columns."""

from __future__ import annotations

import datetime
import re
from typing import Any

_FILTER = re.compile(r"^\[\?\(@\.([\w.]+)\s*==\s*[\"']([^\"']*)[\"']\)\]$")


def json_path(obj: Any, path: str) -> Any:
    """The value at a printer column's JSONPath (``.a.b``, ``.a[0]``, ``.a[?(@.k=="v")].b``)."""
    tokens = re.findall(r"\[\?\([^)]*\)\]|\[\d+\]|\.[^.\[]+", path)
    value = obj
    for token in tokens:
        if value is None:
            return None
        if token.startswith(".") and isinstance(value, dict):
            value = value.get(token[1:])
        elif (match := _FILTER.match(token)) and isinstance(value, list):
            key, wanted = match.groups()
            chosen = [item for item in value if str(json_path(item, "." + key)) == wanted]
            value = chosen[0] if chosen else None
        elif token.startswith("[") and isinstance(value, list) and token[1:-1].isdigit():
            index = int(token[1:-1])
            value = value[index] if index < len(value) else None
        else:
            return None
    return value


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d."""
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= 120):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _cell(value: Any, column_type: str) -> Any:
    if value is None:
        return "<none>" if column_type == "string" else None
    if column_type == "date":
        return age(str(value))
    return value


def table(
    objects: list[dict[str, Any]], columns: list[dict[str, Any]], resource_version: str
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``objects`` with a Name column and ``columns``."""
    definitions = [
        {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
    ]
    definitions += [
        {
            "name": column["name"],
            "type": "string" if column.get("type") == "date" else column.get("type", "string"),
            "format": column.get("format", ""),
            "description": column.get("description", ""),
            "priority": column.get("priority", 0),
        }
        for column in columns
    ]
    rows = [
        {
            "cells": [obj["metadata"]["name"]]
            + [_cell(json_path(obj, c["jsonPath"]), c.get("type", "string")) for c in columns],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            },
        }
        for obj in objects
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }


AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
