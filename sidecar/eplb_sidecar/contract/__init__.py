"""The engine contract: what an engine shares with the sidecar, per MoE layer.

See ``docs/engine-contract.md`` for the protocol an engine adapter implements: the layout
(:mod:`.layout`, no torch needed to read or check one), the table (:mod:`.table`) and a
pod's tables (:mod:`.pod`).
"""
