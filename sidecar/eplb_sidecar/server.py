"""The sidecar's HTTP servers: the authenticated control API and the open metrics port.

Control port: ``/v1/*`` needs ``Authorization: Bearer <token>``, checked by an
:class:`~eplb_sidecar.auth.Authenticator` (the operator's ServiceAccount token reviewed by the
API server, or a token file without Kubernetes).  Calls are serialized; the blocking work
(transfers, copies) runs in a worker thread.  Metrics port: ``/metrics`` and ``/healthz``,
no token, so Prometheus and the kubelet need no credential.

Every refusal is a :class:`~eplb_sidecar.api.Problem` (JSON, a CamelCase reason) with a 4xx,
or 503 while the pod cannot serve (no answer on the token, engine busy, a peer gone): never an
HTML error page, and never a 500 for anything a caller sends.  The executor refuses with
domain errors (:mod:`.refusals`); :data:`STATUS` is the one place that gives them their HTTP
status.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from eplb_sidecar.api import (
    API_PREFIX,
    AbortRequest,
    CommitRequest,
    PrepareRequest,
    Problem,
    Reason,
    largest_request_bytes,
)
from eplb_sidecar.auth import Authenticator, AuthError
from eplb_sidecar.contract.layout import TableLayout
from eplb_sidecar.exporter import SidecarMetrics
from eplb_sidecar.hooks import ControlHooks
from eplb_sidecar.refusals import InvalidRequestError, RefusedError, RequestTooLargeError
from eplb_sidecar.shuffle import ShuffleExecutor

log = logging.getLogger("eplb_sidecar")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RequestModel = TypeVar("RequestModel", bound=BaseModel)

# A body larger than any valid request for this table is refused (413) once that many
# bytes arrived, so a caller cannot make the sidecar buffer hundreds of MiB (the chart
# limits it to 2 GiB).  Slack: the largest request as compact JSON, times room for
# indentation; the floor keeps small tables comfortable.
BODY_LIMIT_FLOOR = 1 << 20
BODY_LIMIT_SLACK = 4


def body_limit(layout: TableLayout) -> int:
    """Most bytes a control request to this pod may have."""
    largest = largest_request_bytes(layout.layers, layout.num_slots, layout.experts, layout.ranks)
    return max(BODY_LIMIT_FLOOR, BODY_LIMIT_SLACK * largest)


EXECUTOR_KEY = web.AppKey("executor", ShuffleExecutor)
METRICS_KEY = web.AppKey("metrics", SidecarMetrics)
AUTH_KEY = web.AppKey("auth", Authenticator)
LOCK_KEY = web.AppKey("lock", asyncio.Lock)
BODY_LIMIT_KEY = web.AppKey("body_limit", int)
HOOKS_KEY = web.AppKey("hooks", ControlHooks)


# The HTTP status of each refusal: 400 the request can never succeed, 409 it does not fit
# what the pod has staged or serves now, 503 retry (a peer, the engine, a rolled-back
# commit), 500 the pod itself is in trouble.
STATUS: dict[Reason, int] = {
    Reason.INVALID_REQUEST: 400,
    Reason.REQUEST_TOO_LARGE: 413,
    Reason.INVALID_LAYER: 400,
    Reason.INVALID_PLACEMENT: 400,
    Reason.INVALID_TRANSFER: 400,
    Reason.OUT_OF_ORDER: 409,
    Reason.NOT_PREPARED: 409,
    Reason.PLACEMENT_MISMATCH: 409,
    Reason.NO_SOURCE: 409,
    Reason.TRANSFER_FAILED: 503,
    Reason.TRANSFER_CORRUPT: 503,
    Reason.ENGINE_BUSY: 503,
    Reason.COMMIT_FAILED: 503,
    Reason.CHECKPOINT_UNREADABLE: 500,
    Reason.ROLLBACK_FAILED: 500,
}


def refusal(refused: RefusedError) -> web.Response:
    """``refused`` as its HTTP status and Problem body."""
    return problem(STATUS[refused.reason], refused.reason.value, refused.message)


def problem(status: int, reason: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(
        Problem(reason=reason, message=message).model_dump(), status=status, headers=headers
    )


@web.middleware
async def problems_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413, …) as Problems too; a bug as a 500 Problem."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        reason = re.sub(r"[^A-Za-z0-9]", "", error.reason.title()) or "HttpError"
        return problem(error.status, reason, error.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, "InternalError", "the sidecar failed; see its log")


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return problem(401, "Unauthorized", "missing bearer token")
    if not presented.isascii():
        return problem(401, "Unauthorized", "the bearer token is not ASCII")
    try:
        await request.app[AUTH_KEY].authenticate(presented)
    except AuthError as refused:
        return problem(refused.status, refused.reason, refused.message)
    return await handler(request)


async def _parse(request: web.Request, model: type[RequestModel]) -> RequestModel:
    """The body as ``model``: pydantic's own JSON parser, which bounds nesting depth and
    number size, and takes dict keys as the strict integers the models ask for."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise RequestTooLargeError(
            f"the body is over {request.app[BODY_LIMIT_KEY]} bytes, more than any valid "
            f"request to this pod"
        ) from error
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise InvalidRequestError(f"body is not JSON: {first['msg']}") from None
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequestError(f"{where}: {first['msg']}") from None


async def _run(request: web.Request, phase: str, call: Callable[[], Any]) -> web.Response:
    """Run one state-changing call: serialized, in a thread, counted and timed."""
    hooks = request.app[HOOKS_KEY]
    await hooks.on_call(phase)
    metrics = request.app[METRICS_KEY]
    started = time.monotonic()
    try:
        async with request.app[LOCK_KEY]:
            result = await asyncio.to_thread(call)
    except RefusedError as refused:
        metrics.shuffles.labels(phase=phase, result="failure").inc()
        return refusal(refused)
    metrics.shuffles.labels(phase=phase, result="success").inc()
    metrics.duration.labels(phase=phase).observe(time.monotonic() - started)
    if phase == "commit":
        for layer in result.layers:
            if layer.outcome == "committed":
                metrics.bytes.labels(source="local").inc(layer.bytes_local)
                metrics.bytes.labels(source="peer").inc(layer.bytes_peer)
                metrics.bytes.labels(source="checkpoint").inc(layer.bytes_checkpoint)
    response = web.json_response(result.model_dump())
    then = hooks.on_answered(phase)
    if then is not None:
        await response.prepare(request)  # the caller gets the whole answer first
        await response.write_eof()
        then()
    return response


async def info(request: web.Request) -> web.Response:
    with_placement = request.query.get("placement", "false").lower() in ("1", "true", "yes")
    return web.json_response(request.app[EXECUTOR_KEY].info(with_placement).model_dump())


def state_change(
    phase: str, model: type[RequestModel], call: Callable[[ShuffleExecutor, Any], Any]
) -> Handler:
    """The handler of ``POST /v1/<phase>``: parse ``model``, then run ``call`` (see _run)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = await _parse(request, model)
        except RefusedError as refused:
            return refusal(refused)
        return await _run(request, phase, lambda: call(request.app[EXECUTOR_KEY], body))

    return handle


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def control_app(
    executor: ShuffleExecutor,
    metrics: SidecarMetrics,
    auth: Authenticator,
    hooks: ControlHooks | None = None,
) -> web.Application:
    limit = body_limit(executor.table.layout)
    app = web.Application(middlewares=[problems_only, require_token], client_max_size=limit)
    app[EXECUTOR_KEY] = executor
    app[METRICS_KEY] = metrics
    app[AUTH_KEY] = auth
    app[BODY_LIMIT_KEY] = limit
    app[LOCK_KEY] = asyncio.Lock()
    app[HOOKS_KEY] = hooks if hooks is not None else ControlHooks()
    app.add_routes(
        [
            web.get(f"{API_PREFIX}/info", info),
            web.post(
                f"{API_PREFIX}/prepare",
                state_change("prepare", PrepareRequest, ShuffleExecutor.prepare),
            ),
            web.post(
                f"{API_PREFIX}/commit",
                state_change("commit", CommitRequest, ShuffleExecutor.commit),
            ),
            web.post(
                f"{API_PREFIX}/abort", state_change("abort", AbortRequest, ShuffleExecutor.abort)
            ),
            web.get("/healthz", healthz),
        ]
    )
    return app


def metrics_app(metrics: SidecarMetrics) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.add_routes([web.get("/metrics", metrics_endpoint), web.get("/healthz", healthz)])
    return app
