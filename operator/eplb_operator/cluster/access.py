"""Which RBAC permission an API request needs: (apiGroup, resource, verb).

The local cluster records every request this way, so a test can derive the operator's
least-privilege RBAC from what it actually did rather than from a hand-kept list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Access:
    group: str  # "" for the core group
    resource: str  # plural, with "/subresource" when there is one
    verb: str  # get, list, watch, create, update, patch, delete


def access_of(method: str, path: str, query: dict[str, str]) -> Access | None:
    """The permission a request to ``path`` needs; None for discovery and non-resources."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource; "namespaces/<name>" alone is the namespace
    resource, name, subresource = rest[0], rest[1] if len(rest) > 1 else None, None
    if len(rest) > 2:
        subresource = rest[2]
    method = method.upper()
    if method == "GET":
        watching = query.get("watch") in ("true", "1")
        verb = "watch" if watching else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, method.lower()
        )
    full = f"{resource}/{subresource}" if subresource else resource
    return Access(group, full, verb)
