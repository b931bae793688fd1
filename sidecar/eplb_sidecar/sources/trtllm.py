"""``--source trtllm``: TensorRT-LLM's expert statistics (``EXPERT_STATISTIC_PATH``).

With ``EXPERT_STATISTIC_ITER_RANGE=A-B``, each rank counts, for iterations A..B-1, the
experts (or, with its MoE load balancer on, the slots) its tokens selected, and at
iteration B writes ``rank<r>.safetensors`` (``"<iteration>_<layer id>"`` → counts; rank 0
also ``meta_info.json``) — once per engine process.  Every poll looks for rank files that
are new or changed and have stayed so for a poll (the writer is done); each is read alone by
``eplb_core.formats.trtllm`` and its counts, summed over iterations, are added with the
file's layer ids.  Per-slot counts fold back to experts with the balancer YAML the engine
started from (``--placement-file``: the one mounted from the operator's ConfigMap).

A pod without rank 0 has no ``meta_info.json``: its width is the balancer's slot count, or
``--experts`` without a balancer.  Files already there when the sidecar starts are not
counted (a restarted sidecar would count them twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
from pathlib import Path

import yaml

from eplb_core.errors import InvalidInputError
from eplb_core.formats.document import PlacementDocument
from eplb_core.formats.loadstats import StepWindow
from eplb_core.formats.trtllm import parse_balancer, read_trtllm
from eplb_sidecar.sources.counters import ExpertCounters

log = logging.getLogger("eplb_sidecar.sources")

META = "meta_info.json"
RANK_FILE = re.compile(r"^rank\d+\.safetensors$")
Identity = tuple[int, int, int]  # inode, modification time (ns), size


class TrtllmSource:
    def __init__(
        self,
        directory: Path,
        counters: ExpertCounters,
        layer_ids: list[int] | None = None,
        experts: int | None = None,
        placement_file: Path | None = None,
    ) -> None:
        self.directory = directory
        self.counters = counters
        self.layer_ids = layer_ids
        self.experts = experts
        self.placement_file = placement_file
        self.dumps = 0  # rank files counted
        self._seen: dict[str, Identity] = self._rank_files()  # there already: not counted
        self._settling: dict[str, Identity] = {}

    def describe(self) -> str:
        return f"TensorRT-LLM expert statistics in {self.directory}"

    async def poll(self) -> None:
        await asyncio.to_thread(self._scan)

    def _scan(self) -> None:
        for name, identity in self._rank_files().items():
            if self._seen.get(name) == identity:
                continue
            if self._settling.get(name) != identity:
                self._settling[name] = identity  # read it once it stays like this for a poll
                continue
            del self._settling[name]
            self._seen[name] = identity
            try:
                self._count(self.directory / name)
                self.dumps += 1
            except (InvalidInputError, ValueError, OSError) as error:
                log.warning("TensorRT-LLM statistics %s not counted: %s", name, error)

    def _rank_files(self) -> dict[str, Identity]:
        found: dict[str, Identity] = {}
        if not self.directory.is_dir():
            return found
        for path in self.directory.iterdir():
            if RANK_FILE.match(path.name):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                found[path.name] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return found

    def _count(self, rank_file: Path) -> None:
        recorded = self._balancer()
        with tempfile.TemporaryDirectory(prefix="eplb-trtllm-") as scratch:
            # The format's reader takes a statistic directory: this file and a meta beside it.
            view = Path(scratch)
            (view / rank_file.name).symlink_to(rank_file.resolve())
            meta = self.directory / META
            if meta.is_file():
                (view / META).symlink_to(meta.resolve())
            else:
                width = recorded.phy2log.shape[1] if recorded is not None else self.experts
                if width is None:
                    raise InvalidInputError(
                        f"no {META} here (not rank 0's pod): give --placement-file or --experts "
                        "for the width of the counts"
                    )
                (view / META).write_text(json.dumps({"num_experts": int(width)}))
            stats = read_trtllm(view, StepWindow(), self.experts, recorded)
        assert stats.layer_ids is not None  # TensorRT-LLM names its layers
        if self.layer_ids is not None:
            unknown = sorted(set(stats.layer_ids) - set(self.layer_ids))
            if unknown:
                raise InvalidInputError(f"it counts layers {unknown} that --layer-ids leaves out")
        self.counters.add(stats.layer_ids, stats.windows.sum(axis=0))

    def _balancer(self) -> PlacementDocument | None:
        """The balancer YAML the engine started from (its per-slot counts fold with it)."""
        if self.placement_file is None:
            return None
        try:
            document = yaml.safe_load(self.placement_file.read_text())
        except yaml.YAMLError as error:
            raise InvalidInputError(f"{self.placement_file}: not YAML ({error})") from None
        if not isinstance(document, dict):
            raise InvalidInputError(f"{self.placement_file}: not a MoeLoadBalancerConfig")
        return parse_balancer(document)
