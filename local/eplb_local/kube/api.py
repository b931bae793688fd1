"""Plain HTTPS to a Kubernetes API, as any client speaks it: JSON in, JSON out.

The tooling's one client (tests, the node agent, the demo); the operator has its own
(``eplb_operator.controller.kube``). Credentials come from a kubeconfig: the CA, and a
client certificate or a bearer token (``token`` or ``tokenFile``).
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


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


@dataclass(frozen=True)
class Credentials:
    """Where to connect and who we are, read from a kubeconfig's current context."""

    server: str
    context: ssl.SSLContext | None
    token: str | None
    namespace: str

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Credentials:
        config = yaml.safe_load(path.read_text())
        current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        context = current["context"]
        cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]
        user = next(u for u in config["users"] if u["name"] == context["user"])["user"]
        server = str(cluster["server"]).rstrip("/")
        tls = None
        if server.startswith("https"):
            tls = ssl.create_default_context()
            if "certificate-authority-data" in cluster:
                tls.load_verify_locations(
                    cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
                )
            elif "certificate-authority" in cluster:
                tls.load_verify_locations(cafile=cluster["certificate-authority"])
            if "client-certificate-data" in user:
                # ssl loads a certificate chain from files only: a private copy, 0600.
                with tempfile.TemporaryDirectory() as scratch:
                    cert, key = Path(scratch) / "client.crt", Path(scratch) / "client.key"
                    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
                    key.touch(mode=0o600)
                    key.write_bytes(base64.b64decode(user["client-key-data"]))
                    tls.load_cert_chain(str(cert), str(key))
        token = user.get("token")
        if token is None and "tokenFile" in user:
            token = Path(user["tokenFile"]).read_text().strip()
        return cls(server, tls, token, str(context.get("namespace", "default")))


class Api:
    """Plain HTTPS to the cluster, as any Kubernetes client would speak it."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.credentials = Credentials.from_kubeconfig(kubeconfig)
        self.url = self.credentials.server

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        if self.credentials.token:
            request.add_header("Authorization", f"Bearer {self.credentials.token}")
        try:
            with urllib.request.urlopen(
                request, timeout=30, context=self.credentials.context
            ) as response:
                return Reply(response.status, _json(response.read()))
        except urllib.error.HTTPError as error:
            return Reply(error.code, _json(error.read()))

    def get(self, path: str, **query: str) -> Reply:
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
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


def _json(raw: bytes) -> Any:
    """A reply body: JSON, or the text itself (e.g. a pod's log)."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")
