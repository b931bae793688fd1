"""The engine contract: what an engine shares with the sidecar, per MoE layer.

See ``docs/engine-contract.md`` for the protocol an engine adapter implements.
"""

from eplb_core.placements import placement_error
from eplb_sidecar.contract.layout import TableLayout, WeightSpec
from eplb_sidecar.contract.table import ExpertTable

__all__ = ["ExpertTable", "TableLayout", "WeightSpec", "placement_error"]
