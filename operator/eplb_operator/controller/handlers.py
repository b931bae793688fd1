"""kopf handlers for ExpertPlacement, run by :mod:`eplb_operator.controller.run`.

One daemon per ExpertPlacement runs :class:`Reconciler` passes: after each pass it sleeps
until the pass's next due time, or until a spec change wakes it.  One task per object
means a placement is never reconciled twice at once; one process at a time runs these
handlers at all: the replica holding the leader-election Lease (run.py, election.py).

Deleted during a rollout, a placement's rollout is told to stop where every pod agrees and
to abort what it staged on every pod (rollout.py); :func:`finish_rollout_on_delete` (an
on-delete handler, so kopf keeps the finalizer meanwhile) waits until it has: no sidecar is
left with staged layers, none with a layer the others lack.

The finalizer (``eplb.io/operator``, which kopf puts on every object a daemon serves) is
held only while an operator runs: at exit, once kopf's watches and daemons have stopped,
:func:`release_finalizers` takes it off every placement this process served.  Otherwise
uninstalling the operator (the CRD is kept) would leave every ExpertPlacement undeletable;
with no operator running there is nothing for a finalizer to wait for.  The next leader
puts it back when it starts serving the object.  A leader that lost its Lease stops kopf
without this cleanup: the new leader holds the finalizers by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Awaitable
from typing import Any

import kopf

from eplb_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from eplb_operator.controller import kube
from eplb_operator.controller.api_errors import classify, describe, retry_delay
from eplb_operator.controller.metrics import METRICS
from eplb_operator.controller.reconcile import RECHECK_SECONDS, Emit, PlacementMemo, Reconciler

METRICS_PORT = int(os.environ.get("EPLB_METRICS_PORT", "8080"))
FINALIZER = "eplb.io/operator"
# (namespace, name) of the placements whose daemon runs in this process.
SERVED: set[tuple[str, str]] = set()
RELEASE_FINALIZERS_AT_EXIT = True  # False while kopf stops for a lost Lease (run.py)
PLACEMENT_DELETED = "PlacementDeleted"  # the reason a rollout stopped by a deletion gives
# Beyond the barrier timeout, what a stopped rollout may still take: the last commit and
# the abort calls (each bounded by the barrier timeout + 10 s in rollout.py).
DELETION_GRACE_SECONDS = 60.0


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
        one_pass = asyncio.create_task(_one_pass(reconciler, failures, emit, logger))
        state.current_pass = one_pass
        try:
            if not await _first_of(one_pass, stopped.wait()):
                _leave_pass(state, stopped, logger)
                return
        except asyncio.CancelledError:  # kopf stops its daemons by cancelling them, too
            _leave_pass(state, stopped, logger)
            raise
        delay, failures = one_pass.result()
        state.wake.clear()  # until the next due time, a spec change, or the stop
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first_of(state.wake.wait(), stopped.wait()), delay)


def _leave_pass(state: PlacementMemo, stopped: kopf.DaemonStopped, logger: kopf.Logger) -> None:
    """The daemon stops with a pass under way.  The placement deleted during a rollout: the
    rollout is told to stop where every pod agrees, and left to finish that
    (:func:`finish_rollout_on_delete` waits for it).  Otherwise the pass is cancelled now:
    the operator exiting, or losing its Lease, must stop acting at once; the next leader
    resumes the rollout from what the pods serve and the status (rollout.py)."""
    one_pass = state.current_pass
    if one_pass is None or one_pass.done():
        return
    reason = stopped.reason
    if reason is not None and reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
        state.stop_reason = PLACEMENT_DELETED
    if state.stop_reason is not None and state.rolling_out:
        logger.info("deleted during a rollout: stopping it where every pod agrees")
        return
    one_pass.cancel()


@kopf.on.delete(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
async def finish_rollout_on_delete(name: str, namespace: str, memo: kopf.Memo, body: kopf.Body,
                                   logger: kopf.Logger, **_: Any) -> None:  # fmt: skip
    """Hold the finalizer until no pod has layers of this placement staged: a rollout under
    way stops where every pod agrees and aborts what it staged on every pod; then whatever
    is still staged (an operator that died mid-rollout left it) is aborted.  Nobody would
    clean up after the placement is gone: a next incarnation may never come."""
    state = _memo(memo)
    state.stop_reason = PLACEMENT_DELETED
    one_pass = state.current_pass
    if one_pass is not None and not one_pass.done() and state.rolling_out:
        rollout = (body.get("spec") or {}).get("rollout") or {}
        barrier = float(rollout.get("barrierTimeoutSeconds") or 30)
        done, _pending = await asyncio.wait({one_pass}, timeout=barrier + DELETION_GRACE_SECONDS)
        if not done:
            logger.warning("the stopped rollout did not end in time; cancelled")
            one_pass.cancel()
    reconciler = Reconciler(namespace, name, state, lambda *_: None)
    try:
        dropped = await reconciler.drop_staging()
    except Exception as error:  # said, and the deletion goes on: a retried handler would
        logger.warning(f"staging left on the pods unchecked: {error!r}")  # hold it forever
        return
    if dropped:
        logger.info(f"aborted what pods {dropped} had staged")


async def _first_of(first: Awaitable[Any], second: Awaitable[Any]) -> bool:
    """Wait until either is done (the other is cancelled, unless it is a task of the
    caller's); True when ``first`` finished first."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if task is not first and not task.done():
                task.cancel()
    return tasks[0] in done


async def _one_pass(
    reconciler: Reconciler, failures: int, emit: Emit, logger: kopf.Logger
) -> tuple[float, int]:
    """One pass, never raising: (seconds until the next, API refusals in a row)."""
    namespace, name = reconciler.namespace, reconciler.name
    try:
        return await reconciler.run(), 0
    except kube.ApiException as error:
        # A refusal of the API server (RBAC, overload): said as a condition and an Event,
        # then retried later and later, never a crash loop.
        failures += 1
        problem = classify(int(error.status or 0))
        message = describe(int(error.status or 0), error.reason, error.body)
        emit("Warning", problem.value, message)
        METRICS.errors.labels(namespace=namespace, placement=name, reason=problem.value).inc()
        with contextlib.suppress(kube.ApiException):  # the status write may be refused too
            await reconciler.degraded(problem.value, message)
        return retry_delay(RECHECK_SECONDS, failures), failures
    except Exception as error:  # one bad pass must not end the daemon
        logger.exception(f"reconcile failed: {error}")
        METRICS.errors.labels(namespace=namespace, placement=name, reason="Internal").inc()
        return RECHECK_SECONDS, failures


@kopf.on.cleanup()
async def release_finalizers(logger: kopf.Logger, **_: Any) -> None:
    """At exit (kopf runs this after its watches and daemons stopped, so nothing puts the
    finalizer back): take ours off every placement served, so none is stuck without us.
    Not when kopf stops because the Lease was lost (run.py): the new leader holds them."""
    if not RELEASE_FINALIZERS_AT_EXIT:
        return
    for namespace, name in sorted(SERVED):
        try:
            await kube.remove_placement_finalizer(namespace, name, FINALIZER)
        except kube.ApiException as error:  # e.g. a 409: the next operator sorts it out
            logger.warning(f"{namespace}/{name}: finalizer kept: {error.status} {error.reason}")
