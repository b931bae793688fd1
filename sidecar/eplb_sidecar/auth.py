"""Who may call the control API: a Kubernetes identity (the default) or a token file.

``kubernetes`` (the kube-rbac-proxy pattern): the operator presents its projected,
audience-bound ServiceAccount token; the sidecar asks the API server who that is (a
TokenReview with the sidecar's audience, so a token minted for anything else is refused) and
whether that identity may roll out placements in the pod's namespace (a SubjectAccessReview
of verb ``update`` on ``expertplacements/rollout`` in group ``eplb.io`` — a right only the
operator's role grants; no such subresource is served, the name exists for RBAC alone).
No Secret exists anywhere: nothing to steal, nothing to rotate by hand.  Positive answers
are cached for a few seconds, so a rollout's calls do not cost two API requests each.

``token-file``: a bearer token compared with the content of a file, for running without
Kubernetes (``eplb_local.launch``, unit tests).

Refusals are :class:`AuthError`: 401 for a missing, unknown, expired or wrong-audience
token, 403 for a valid identity without the right, 503 when the answer cannot be had (no
token file, API server unreachable, the sidecar itself not allowed to ask).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

log = logging.getLogger("eplb_sidecar")

DEFAULT_AUDIENCE = "eplb-sidecar"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class AuthError(Exception):
    """A refused call: the HTTP status, a CamelCase reason and a message for the caller."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class Authenticator(Protocol):
    """Decides whether the holder of a bearer token may use the control API."""

    async def authenticate(self, token: str) -> None:
        """Return when ``token`` may call; raise :class:`AuthError` otherwise."""

    def transfer_secret(self) -> bytes:
        """The secret of peer-transfer sessions the operator sent none for (empty: none)."""


class TokenUnavailableError(RuntimeError):
    """The token file is missing or unreadable: no call can be authenticated (503)."""


class TokenFile:
    """The bearer token in a file, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._token = b""

    def current(self) -> bytes:
        """The token (empty when the file is); raises TokenUnavailableError without one.

        A file that disappears stops the old token from working too: a deleted file must
        not keep the API open.
        """
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self._token = self.path.read_bytes().strip()
                self._mtime = mtime
        except OSError as error:
            self._mtime, self._token = -1.0, b""
            log.warning("token file %s: %s", self.path, error)
            raise TokenUnavailableError(
                "the control API's token file is missing or unreadable; retry later"
            ) from error
        return self._token

    def matches(self, presented: bytes) -> bool:
        token = self.current()
        if not token:
            return False  # an empty file must not open the API
        return hmac.compare_digest(presented, token)


class TokenFileAuth:
    """``--auth token-file``: the caller's token must equal the file's (no Kubernetes)."""

    def __init__(self, path: Path) -> None:
        self.file = TokenFile(path)

    async def authenticate(self, token: str) -> None:
        try:
            accepted = self.file.matches(token.encode("ascii"))
        except TokenUnavailableError as error:
            raise AuthError(503, "TokenUnavailable", str(error)) from error
        if not accepted:
            raise AuthError(401, "Unauthorized", "wrong bearer token")

    def transfer_secret(self) -> bytes:
        return self.file.current()


@dataclass(frozen=True)
class Permission:
    """The SubjectAccessReview a caller must pass, in the sidecar's own namespace."""

    verb: str = "update"
    group: str = "eplb.io"
    resource: str = "expertplacements"
    subresource: str = "rollout"

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}/{self.subresource}.{self.group}"


@dataclass(frozen=True)
class ApiServer:
    """How the sidecar reaches the API server as its own ServiceAccount."""

    url: str
    ca_file: Path
    token_file: Path  # the sidecar's own token: re-read per request (the kubelet rotates it)

    @classmethod
    def in_cluster(cls, environ: dict[str, str]) -> ApiServer:
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ValueError(
                "KUBERNETES_SERVICE_HOST/PORT are unset: --auth kubernetes runs in a pod "
                "(use --auth token-file without Kubernetes)"
            )
        host = f"[{host}]" if ":" in host else host
        return cls(
            f"https://{host}:{port}",
            SERVICE_ACCOUNT_DIR / "ca.crt",
            SERVICE_ACCOUNT_DIR / "token",
        )


class KubernetesAuth:
    """``--auth kubernetes``: TokenReview for ``audience``, then SubjectAccessReview."""

    def __init__(
        self,
        server: ApiServer,
        namespace: str,
        audience: str = DEFAULT_AUDIENCE,
        permission: Permission = Permission(),
        cache_seconds: float = 10.0,
        cache_entries: int = 64,
        timeout: float = 10.0,
    ) -> None:
        self.server, self.namespace, self.audience = server, namespace, audience
        self.permission = permission
        # Short: a revoked right (RoleBinding deleted) stops working within this time.
        self.cache_seconds, self.cache_entries = cache_seconds, cache_entries
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._allowed: OrderedDict[bytes, float] = OrderedDict()  # sha256(token) → until
        self._session: aiohttp.ClientSession | None = None

    async def authenticate(self, token: str) -> None:
        key = hashlib.sha256(token.encode()).digest()
        until = self._allowed.get(key)
        if until is not None and time.monotonic() < until:
            return
        self._allowed.pop(key, None)
        user = await self._review_token(token)
        await self._review_access(user)
        self._allowed[key] = time.monotonic() + self.cache_seconds
        while len(self._allowed) > self.cache_entries:
            self._allowed.popitem(last=False)

    def transfer_secret(self) -> bytes:
        return b""  # the operator sends every session's secret: nothing shared to fall back on

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _review_token(self, token: str) -> dict[str, Any]:
        review = await self._create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.audience]},
            },
        )
        status = review.get("status", {})
        if not status.get("authenticated"):
            why = status.get("error") or "the API server does not know it"
            raise AuthError(401, "Unauthorized", f"token refused: {why}")
        if self.audience not in status.get("audiences", []):
            raise AuthError(401, "Unauthorized", f"the token is not for audience {self.audience}")
        return dict(status.get("user", {}))

    async def _review_access(self, user: dict[str, Any]) -> None:
        permission = self.permission
        review = await self._create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user.get("username", ""),
                    "uid": user.get("uid", ""),
                    "groups": user.get("groups", []),
                    "extra": user.get("extra", {}),
                    "resourceAttributes": {
                        "namespace": self.namespace,
                        "verb": permission.verb,
                        "group": permission.group,
                        "resource": permission.resource,
                        "subresource": permission.subresource,
                    },
                },
            },
        )
        if not review.get("status", {}).get("allowed"):
            raise AuthError(
                403,
                "Forbidden",
                f"{user.get('username', 'the caller')} may not {permission} in namespace "
                f"{self.namespace}",
            )

    async def _create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a review as the sidecar's ServiceAccount; 503 when no answer can be had."""
        server = self.server
        try:
            own_token = server.token_file.read_text().strip()
            if self._session is None:
                context = ssl.create_default_context(cafile=str(server.ca_file))
                self._session = aiohttp.ClientSession(
                    timeout=self.timeout, connector=aiohttp.TCPConnector(ssl=context)
                )
            async with self._session.post(
                server.url + path,
                data=json.dumps(body),
                headers={
                    "Authorization": f"Bearer {own_token}",
                    "Content-Type": "application/json",
                },
            ) as response:
                text = await response.text()
                status = response.status
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError) as error:
            raise AuthError(
                503,
                "AuthUnavailable",
                f"cannot reach the API server at {server.url} to review the token "
                f"({error or type(error).__name__}); retry later",
            ) from error
        if status != 201:
            hint = (
                " (the sidecar's ServiceAccount needs create on tokenreviews and "
                "subjectaccessreviews: the eplb-sidecar chart's eplb-sidecar.rbac)"
                if status == 403
                else ""
            )
            raise AuthError(
                503,
                "AuthUnavailable",
                f"the API server answered {status} to {path}{hint}; retry later",
            )
        try:
            return dict(json.loads(text))
        except ValueError as error:
            raise AuthError(
                503, "AuthUnavailable", f"the API server's answer to {path} is not JSON"
            ) from error
