"""``--source sglang``: SGLang's expert-distribution recorder, dumped over HTTP.

SGLang started with ``--expert-distribution-recorder-mode stat`` records, once
``/start_expert_distribution_record`` is called, the logical experts each step routed to.
``/dump_expert_distribution_record`` makes its rank 0 ``torch.save``
``expert_distribution_recorder_<time>.pt`` into ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``
(``{"rank", "logical_count": [T, H, E], ...}``: the steps of its circular buffer, one row per
hidden layer, all-reduced over the EP group) and resets the buffer.  Every poll dumps, adds
each dump file's counts to the counters (``eplb_core.formats.sglang`` reads them) and
deletes it; ``--layer-ids`` picks the MoE rows.

Recording is started when the sidecar first reaches the engine and again whenever the
engine was unreachable (a restarted engine records nothing until told).  An engine that
answers 404 serves no recorder here (a worker node of a multi-node group, where rank 0's
node dumps for the whole group): nothing is exported and the sidecar stays healthy.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp

from eplb_core.errors import InvalidInputError
from eplb_core.formats.sglang import read_sglang
from eplb_sidecar.sources.counters import ExpertCounters

log = logging.getLogger("eplb_sidecar.sources")

START = "/start_expert_distribution_record"
DUMP = "/dump_expert_distribution_record"
DUMP_GLOB = "expert_distribution_recorder_*.pt"


class SglangSource:
    def __init__(
        self,
        engine_url: str,
        dump_dir: Path,
        counters: ExpertCounters,
        layer_ids: list[int] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.dump_dir = dump_dir
        self.counters = counters
        self.layer_ids = layer_ids
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.recording = False
        self.dumps = 0  # dump files counted
        self._said = ""  # the engine's state last logged (each change is logged once)

    def describe(self) -> str:
        return f"SGLang recorder at {self.engine_url}, dumps in {self.dump_dir}"

    async def poll(self) -> None:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            if not self.recording:
                self.recording = await self._call(session, START)
            if self.recording:
                self.recording = await self._call(session, DUMP)
        await asyncio.to_thread(self._read_dumps)

    async def _call(self, session: aiohttp.ClientSession, path: str) -> bool:
        """POST ``path``; True when the engine did it."""
        try:
            async with session.post(self.engine_url + path) as response:
                text = (await response.text()).strip()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            self._say(f"engine unreachable ({type(error).__name__}: {error}); will start "
                      "recording when it is back")  # fmt: skip
            return False
        if status == 404:
            self._say(f"engine answers 404 to {path}: no expert-distribution recorder here "
                      "(a worker node?); exporting nothing")  # fmt: skip
            return False
        if status != 200:
            self._say(f"engine refused {path} with {status}: {text[:200]} (is it started "
                      "with --expert-distribution-recorder-mode stat?)")  # fmt: skip
            return False
        self._say(f"recording expert distribution at {self.engine_url}")
        return True

    def _read_dumps(self) -> None:
        for path in sorted(self.dump_dir.glob(DUMP_GLOB)):
            try:
                counts = read_sglang(path).windows.sum(axis=0)  # [H, E]
                rows = self._moe_rows(counts.shape[0])
                self.counters.add(rows, counts[rows])
                self.dumps += 1
            except (InvalidInputError, ValueError, OSError) as error:
                log.warning("SGLang dump %s not counted: %s", path.name, error)
            path.unlink(missing_ok=True)  # counted once, or never: the directory must not fill

    def _moe_rows(self, hidden_layers: int) -> list[int]:
        if self.layer_ids is None:
            return list(range(hidden_layers))
        beyond = [layer for layer in self.layer_ids if layer >= hidden_layers]
        if beyond:
            raise InvalidInputError(
                f"the dump has {hidden_layers} rows (one per hidden layer), --layer-ids names "
                f"layer {beyond[0]}"
            )
        return self.layer_ids

    def _say(self, message: str) -> None:
        if message != self._said:
            self._said = message
            log.info("%s", message)
