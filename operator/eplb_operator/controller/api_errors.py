"""What an error answer of the Kubernetes API means to a user, and how long to wait after it.

Pure: the reconcile loop turns an ``ApiException`` into a Degraded condition and a Warning
Event with this reason and message, and waits ``retry_delay`` before the next pass — longer
after each failure in a row, so a missing permission or a struggling API server is not
hammered, and never a crash loop.
"""

from __future__ import annotations

import json
from enum import Enum


class ApiProblem(str, Enum):
    FORBIDDEN = "Forbidden"  # RBAC: the operator's ServiceAccount lacks a permission
    UNAUTHORIZED = "Unauthorized"  # its token was refused
    CONFLICT = "Conflict"  # someone else wrote the object in between, again and again
    INVALID = "Invalid"  # the server refused what the operator wrote (422)
    UNAVAILABLE = "ApiUnavailable"  # 429, 5xx: the API server is overloaded or failing
    OTHER = "ApiError"


def classify(status: int) -> ApiProblem:
    if status == 403:
        return ApiProblem.FORBIDDEN
    if status == 401:
        return ApiProblem.UNAUTHORIZED
    if status == 409:
        return ApiProblem.CONFLICT
    if status == 422:
        return ApiProblem.INVALID
    if status == 429 or status >= 500:
        return ApiProblem.UNAVAILABLE
    return ApiProblem.OTHER


def describe(status: int, reason: str | None, body: str | bytes | None) -> str:
    """One line: the server's own message (a Status object's ``message``) and a hint."""
    message = ""
    if body:
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = str(body)[:300]
    text = f"the Kubernetes API answered {status} {reason or ''}".rstrip()
    if message:
        text += f": {message}"
    if status == 403:
        text += " (grant it in the operator's Role or ClusterRole: the chart's rbac.yaml)"
    return text


def retry_delay(base: float, failures: int, ceiling: float = 300.0) -> float:
    """``base`` after the first failure, doubling with each one after, up to ``ceiling``."""
    return float(min(ceiling, base * (2 ** max(0, failures - 1))))
