"""kopf handlers for ExpertPlacement (``kopf run -m eplb_operator.controller.handlers``).

One daemon per ExpertPlacement runs :class:`Reconciler` passes: after each pass it sleeps
until the pass's next due time, or until a spec change wakes it.  One task per object
means a placement is never reconciled twice at once.  Run one operator replica (kopf has
no leader election, and this module adds none yet): the chart uses a single-replica
Deployment with the Recreate strategy.

The finalizer (``eplb.io/operator``, which kopf puts on every object a daemon serves) is
held only while an operator runs: at exit, once kopf's watches and daemons have stopped,
:func:`release_finalizers` takes it off every placement this process served.  Otherwise
uninstalling the operator (the CRD is kept) would leave every ExpertPlacement undeletable;
with no operator running there is nothing for a finalizer to wait for.  The next operator
puts it back when it starts serving the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from typing import Any

import kopf

from eplb_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from eplb_operator.controller import kube
from eplb_operator.controller.api_errors import classify, describe, retry_delay
from eplb_operator.controller.metrics import METRICS
from eplb_operator.controller.reconcile import RECHECK_SECONDS, PlacementMemo, Reconciler

METRICS_PORT = int(os.environ.get("EPLB_METRICS_PORT", "8080"))
FINALIZER = "eplb.io/operator"
# (namespace, name) of the placements whose daemon runs in this process.
SERVED: set[tuple[str, str]] = set()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else KUBECONFIG: the same whichever client libs exist.
    In a pod, kopf watches the server our own client (kube.api_client) writes to."""
    info = kopf.login_with_service_account(**kwargs)
    server = kube.in_cluster_server(os.environ)
    if info is not None and server is not None:
        return dataclasses.replace(info, server=server)
    return info or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations: the status belongs to the API.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="eplb.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="eplb.io")
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = 30  # warnings and errors from the log become Events too
    if METRICS_PORT:
        METRICS.serve(METRICS_PORT)


def _memo(memo: kopf.Memo) -> PlacementMemo:
    if "placement" not in memo:
        memo["placement"] = PlacementMemo()
    state: PlacementMemo = memo["placement"]
    return state


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def wake_on_spec_change(memo: kopf.Memo, **_: Any) -> None:
    """A spec change (a new ConfigMap ref, rebalance id, pause) is acted on at once."""
    _memo(memo).wake.set()


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)  # type: ignore[arg-type]
async def reconcile_loop(
    name: str,
    namespace: str,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    state = _memo(memo)

    def emit(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)
        (logger.warning if kind == "Warning" else logger.info)(f"{reason}: {message}")

    reconciler = Reconciler(namespace, name, state, emit)
    failures = 0  # passes in a row that the API refused
    SERVED.add((namespace, name))
    while not stopped:
        try:
            delay = await reconciler.run()
            failures = 0
        except kube.ApiException as error:
            # A refusal of the API server (RBAC, overload): said as a condition and an
            # Event, then retried later and later, never a crash loop.
            failures += 1
            problem = classify(int(error.status or 0))
            message = describe(int(error.status or 0), error.reason, error.body)
            emit("Warning", problem.value, message)
            METRICS.errors.labels(namespace=namespace, placement=name, reason=problem.value).inc()
            with contextlib.suppress(kube.ApiException):  # the status write may be refused too
                await reconciler.degraded(problem.value, message)
            delay = retry_delay(RECHECK_SECONDS, failures)
        except Exception as error:  # one bad pass must not end the daemon
            logger.exception(f"reconcile failed: {error}")
            METRICS.errors.labels(namespace=namespace, placement=name, reason="Internal").inc()
            delay = RECHECK_SECONDS
        state.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wake.wait(), timeout=delay)


@kopf.on.cleanup()
async def release_finalizers(logger: kopf.Logger, **_: Any) -> None:
    """At exit (kopf runs this after its watches and daemons stopped, so nothing puts the
    finalizer back): take ours off every placement served, so none is stuck without us."""
    for namespace, name in sorted(SERVED):
        try:
            await kube.remove_placement_finalizer(namespace, name, FINALIZER)
        except kube.ApiException as error:  # e.g. a 409: the next operator sorts it out
            logger.warning(f"{namespace}/{name}: finalizer kept: {error.status} {error.reason}")
