"""``--source vllm-stats``: the JSONL vLLM appends at ``eplb_config.write_stats_path``.

vLLM (PR #41141) writes an ``eplb_load_meta`` line when it opens the file, then one
``eplb_load_stats`` record per EPLB step: ``expert_load`` ``[L][P]`` tokens per physical slot
of the whole EP group and the ``p2l_map`` ``[L][P]`` in force (its earlier revision had no
meta line and ``num_ranks`` in every record).  Each record is checked and folded to logical
experts by ``eplb_core.formats.vllm``'s own record parser and ``fold_slots``; L counts
MoE layers only, so ``--layer-ids`` names them.

A line that is not a usable record is logged and skipped; the file may be truncated,
rotated or re-created by a restarted engine (:class:`~.tail.LineTail`).  Records already in
the file when the sidecar starts are not counted (a restarted sidecar would count them
twice); its meta line is read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from eplb_core.errors import InvalidInputError
from eplb_core.formats import vllm as vllm_format
from eplb_core.formats.counts import fold_slots
from eplb_sidecar.sources.counters import ExpertCounters
from eplb_sidecar.sources.tail import NEW_FILE, LineTail

log = logging.getLogger("eplb_sidecar.sources")


class VllmStatsSource:
    def __init__(
        self,
        path: Path,
        counters: ExpertCounters,
        layer_ids: list[int] | None = None,
        experts: int | None = None,
    ) -> None:
        self.path = path
        self.counters = counters
        self.layer_ids = layer_ids
        self.experts = experts
        self._tail = LineTail(path)
        self._meta: dict[str, Any] | None = None
        self._line = 0  # line number in the current file, for messages
        self._context_only = path.exists()  # what is there already: read, not counted
        self.records = 0  # records counted
        self.skipped = 0  # lines that were not usable records

    def describe(self) -> str:
        return f"vLLM stats {self.path}"

    async def poll(self) -> None:
        lines = self._tail.read()
        context_only, self._context_only = self._context_only, False
        for line in lines:
            if line is NEW_FILE:
                self._meta, self._line = None, 0
                continue
            self._line += 1
            try:
                self._take(line, count=not context_only)
            except ValueError as error:  # InvalidInputError, or a row of another width
                self.skipped += 1
                log.warning("%s line %d skipped: %s", self.path, self._line, error)

    def _take(self, line: bytes, count: bool) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            raise InvalidInputError("not JSON (a torn write?)") from None
        if not isinstance(record, dict):
            raise InvalidInputError("not a record (a JSON object)")
        kind = record.get("record_type")
        if kind == vllm_format.META:
            # A restarted engine appending to the file writes its meta line again.
            self._meta = vllm_format._check_meta(record)
            return
        if kind != vllm_format.STATS:
            raise InvalidInputError(f"unexpected record_type {kind!r}")
        if self._meta is None and "num_ranks" not in record:
            raise InvalidInputError(f"{vllm_format.STATS} before {vllm_format.META}")
        _, slot_load, p2l = vllm_format._stats_record(record)
        if not count:
            return
        layers, slots = slot_load.shape
        layer_ids = self.layer_ids if self.layer_ids is not None else list(range(layers))
        if len(layer_ids) != layers:
            raise InvalidInputError(
                f"expert_load has {layers} MoE layers, --layer-ids names {len(layer_ids)}"
            )
        self.counters.add(layer_ids, fold_slots(slot_load, p2l, self._experts(slots, p2l)))
        self.records += 1

    def _experts(self, slots: int, p2l: Any) -> int:
        """E: slots less the meta's redundant experts, else ``--experts``, else the map's."""
        if self._meta is not None:
            experts = slots - int(self._meta["num_redundant_experts"])
            if self.experts is not None and experts != self.experts:
                raise InvalidInputError(
                    f"{slots} slots less num_redundant_experts is {experts} experts, "
                    f"--experts says {self.experts}"
                )
            return experts
        return self.experts if self.experts is not None else int(p2l.max()) + 1
