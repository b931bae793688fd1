"""A minimal kopf operator for the lifecycle test: it marks each stage in the status."""

from __future__ import annotations

from typing import Any

import kopf

RESOURCE = ("eplb.io", "v1alpha1", "expertplacements")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.create(*RESOURCE)
def created(patch: kopf.Patch, **_: Any) -> None:
    patch.status["phase"] = "Created"


@kopf.on.update(*RESOURCE, field="spec")
def updated(patch: kopf.Patch, new: Any, **_: Any) -> None:
    patch.status["phase"] = f"Updated-{new['rollout']['layersPerStep']}"


@kopf.on.delete(*RESOURCE)
def deleted(logger: kopf.Logger, **_: Any) -> None:
    logger.info("probe saw the deletion")
