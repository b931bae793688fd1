"""Which permissions a user exercised, read off the API server's audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class Access:
    """One RBAC permission: (API group, resource[/subresource], verb)."""

    group: str
    resource: str
    verb: str


def requests(audit_log: Path, username: str) -> Iterator[tuple[Access, int]]:
    """(permission, HTTP status) of each request ``username`` made on a resource."""
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != username or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        code = int(event.get("responseStatus", {}).get("code", 0))
        yield Access(ref.get("apiGroup", ""), resource, event["verb"]), code


def accesses(audit_log: Path, username: str) -> set[Access]:
    """What ``username`` was allowed to use (the authorizer let anything but 401/403 pass)."""
    return {access for access, code in requests(audit_log, username) if code not in (401, 403)}


def denied(audit_log: Path, username: str) -> set[Access]:
    """What ``username`` was refused (403)."""
    return {access for access, code in requests(audit_log, username) if code == 403}
