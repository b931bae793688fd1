"""The sidecar API's integer bounds are the ExpertPlacement CRD's: a request the operator can
make from a valid spec is never refused, and nothing larger reaches a tensor."""

from __future__ import annotations

import annotated_types
from pydantic import BaseModel

from eplb_operator.api.v1alpha1 import ModelShape, PodsSpec, TopologySpec
from eplb_sidecar import api


def upper_bound(model: type[BaseModel], field: str) -> int:
    for rule in model.model_fields[field].metadata:
        if isinstance(rule, annotated_types.Le):
            return int(rule.le)  # type: ignore[call-overload]
    raise AssertionError(f"{model.__name__}.{field} has no upper bound")


def test_the_sidecar_bounds_are_the_crd_bounds() -> None:
    assert upper_bound(ModelShape, "layers") == api.MAX_LAYERS
    assert upper_bound(ModelShape, "experts") == api.MAX_EXPERTS
    assert upper_bound(TopologySpec, "ranks") == api.MAX_RANKS
    assert upper_bound(TopologySpec, "slots_per_rank") == api.MAX_SLOTS_PER_RANK
    assert upper_bound(PodsSpec, "ranks_per_pod") == api.MAX_RANKS_PER_POD
    assert api.MAX_REVISION == 2**63 - 1  # revisions live in an int64 tensor
