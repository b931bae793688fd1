"""Plain HTTP to a (local) Kubernetes API, as any client speaks it: JSON in, JSON out."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    code: int
    body: Any


class ApiError(RuntimeError):
    """A call that had to succeed did not: the reply says why."""

    def __init__(self, method: str, path: str, reply: Reply) -> None:
        message = reply.body.get("message") if isinstance(reply.body, dict) else reply.body
        super().__init__(f"{method} {path}: {reply.code} {message}")
        self.reply = reply


class Api:
    """Plain HTTP to the cluster, as any Kubernetes client would speak it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, json.loads(response.read() or b"null"))
        except urllib.error.HTTPError as error:
            return Reply(error.code, json.loads(error.read() or b"null"))

    def get(self, path: str) -> Reply:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Reply:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any) -> Reply:
        return self.call("PUT", path, body)

    def merge(self, path: str, body: Any) -> Reply:
        return self.call("PATCH", path, body, "application/merge-patch+json")

    def json_patch(self, path: str, ops: list[dict[str, Any]]) -> Reply:
        return self.call("PATCH", path, ops, "application/json-patch+json")

    def delete(self, path: str) -> Reply:
        return self.call("DELETE", path)

    def checked(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """The body of a 2xx reply; ApiError for anything else."""
        reply = self.call(method, path, body, content_type)
        if not 200 <= reply.code < 300:
            raise ApiError(method, path, reply)
        return reply.body
