"""kopf handlers for ExpertPlacement (``kopf run -m eplb_operator.controller.handlers``).

This slice checks each placement against its live pods and reports the result in the
``Degraded`` condition: a spec that passed the API server but does not match the pods
(fewer pods than ranks, duplicate or out-of-range ranks, unlabelled pods) is surfaced with
a reason and a message, never a crash or a silent no-op.  Rollouts join in later.
"""

from __future__ import annotations

import os
from typing import Any

import kopf
import pydantic

from eplb_operator.api.v1alpha1 import GROUP, PLURAL, VERSION, ExpertPlacementSpec
from eplb_operator.controller.conditions import ConditionStatus, condition, set_condition
from eplb_operator.controller.kube import list_pods
from eplb_operator.controller.pods import check_pods

RECHECK_SECONDS = float(os.environ.get("EPLB_RECHECK_SECONDS", "30"))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else KUBECONFIG: the same whichever client libs exist."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations: the status belongs to the API.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="eplb.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="eplb.io")
    settings.persistence.finalizer = "eplb.io/operator"
    settings.posting.level = 20  # INFO and above become Events


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.timer(GROUP, VERSION, PLURAL, interval=RECHECK_SECONDS, initial_delay=RECHECK_SECONDS)
async def check_against_pods(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Set ``Degraded`` from the pods the placement selects."""
    generation = int(meta.get("generation") or 0)
    conditions = list(status.get("conditions") or [])
    try:
        model = ExpertPlacementSpec.model_validate(dict(spec))
    except pydantic.ValidationError as error:
        reason, message = "InvalidSpec", "; ".join(e["msg"] for e in error.errors())
    else:
        pods = await list_pods(namespace or "default", model.selector.to_query())
        check = check_pods(pods, model)
        if check.consistent:
            reason, message = (
                "PodsMatchSpec",
                (f"{len(check.groups)} group(s) of {model.topology.ranks} ranks"),
            )
        else:
            reason, message = "PodsInconsistent", "; ".join(check.problems)
    degraded: ConditionStatus = "False" if reason == "PodsMatchSpec" else "True"
    before = condition(conditions, "Degraded")
    updated = set_condition(conditions, "Degraded", degraded, reason, message, generation)
    if before is None or (before.get("status"), before.get("message")) != (degraded, message):
        (logger.warning if degraded == "True" else logger.info)(f"{reason}: {message}")
    patch.status["conditions"] = updated
    patch.status["observedGeneration"] = generation
    if degraded == "True":
        patch.status["phase"] = "Degraded"
