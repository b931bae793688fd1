"""Placement revisions: ControllerRevisions owned by their ExpertPlacement.

A revision holds a whole model's placement ``[L, P]`` (too large for the status, and kopf
copies the spec into an annotation), the load it was planned from ``[L, E]`` (the
similarity gate's reference) and where it came from.  ``<placement>-<n>``, ``revision: n``,
labelled ``eplb.io/placement=<placement>``; the API garbage-collects them with their owner.
Building and reading bodies is pure; the I/O is in :mod:`.kube`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import torch

from eplb_operator.api.v1alpha1 import API_VERSION, KIND
from eplb_operator.controller.kube import REVISION_LABEL

Source = Literal["online", "offline", "rollback"]


@dataclass(frozen=True)
class Revision:
    number: int
    name: str
    placement: torch.Tensor  # [L, P] int64
    load: torch.Tensor | None  # [L, E] float64, what an online plan was made from
    source: Source
    predicted_balancedness: float | None = None
    moves: int = 0
    config_map_digest: str | None = None


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def revision_body(owner: dict[str, Any], revision: Revision) -> dict[str, Any]:
    meta = owner["metadata"]
    data: dict[str, Any] = {
        "placement": revision.placement.tolist(),
        "source": revision.source,
        "moves": revision.moves,
    }
    if revision.load is not None:
        data["load"] = revision.load.tolist()
    if revision.predicted_balancedness is not None:
        data["predictedBalancedness"] = revision.predicted_balancedness
    if revision.config_map_digest is not None:
        data["configMapDigest"] = revision.config_map_digest
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision.name,
            "namespace": meta.get("namespace"),
            "labels": {REVISION_LABEL: meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "revision": revision.number,
        "data": data,
    }


def parse_revision(obj: dict[str, Any]) -> Revision:
    data = obj.get("data") or {}
    load = data.get("load")
    return Revision(
        number=int(obj["revision"]),
        name=obj["metadata"]["name"],
        placement=torch.tensor(data["placement"], dtype=torch.int64),
        load=torch.tensor(load, dtype=torch.float64) if load is not None else None,
        source=data.get("source", "online"),
        predicted_balancedness=data.get("predictedBalancedness"),
        moves=int(data.get("moves", 0)),
        config_map_digest=data.get("configMapDigest"),
    )


def revision_name(placement: str, number: int) -> str:
    return f"{placement}-{number}"


def to_prune(revisions: list[Revision], keep: set[str], limit: int) -> list[str]:
    """Names of the oldest revisions beyond ``limit`` (never one named in ``keep``)."""
    candidates = [r for r in sorted(revisions, key=lambda r: r.number) if r.name not in keep]
    excess = len(revisions) - limit
    return [r.name for r in candidates[: max(0, excess)]]
