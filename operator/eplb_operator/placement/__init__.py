"""The placement policy: pure functions on arrays (numpy, or torch tensors as given), no I/O.

Public surface: ``Topology``, ``rebalance`` (a fresh placement), ``plan`` (per-layer,
migration-aware, budgeted decisions) and the derived views in ``views``.
"""

from eplb_operator.placement.planner import LayerPlan, LayerReason, Plan, PlanOptions, plan
from eplb_operator.placement.rebalance import Mode, rebalance
from eplb_operator.placement.topology import Topology

__all__ = [
    "LayerPlan",
    "LayerReason",
    "Mode",
    "Plan",
    "PlanOptions",
    "Topology",
    "plan",
    "rebalance",
]
