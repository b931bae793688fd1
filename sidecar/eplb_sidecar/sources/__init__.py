"""Load sources: an engine's own load output as the sidecar's token counters.

Engines that cannot hot-swap (vLLM, SGLang, TensorRT-LLM) still record per-expert load in
their own formats; each source here reads one of them and adds it to
:class:`~eplb_sidecar.sources.counters.ExpertCounters`, exported as the same
``eplb_expert_tokens_total{layer,expert}`` series the table exporter has, the ``layer`` label
being the engine's layer id (its index among all hidden layers):

- ``vllm-stats`` (:mod:`.vllm_stats`): the JSONL vLLM appends at ``write_stats_path``;
- ``sglang`` (:mod:`.sglang`): SGLang's expert-distribution recorder, dumped over HTTP;
- ``trtllm`` (:mod:`.trtllm`): TensorRT-LLM's ``EXPERT_STATISTIC_PATH`` dumps;
- ``table``: the engine contract's expert table (the hot-swap sidecar, not here).

The files are parsed by the engine format readers of ``eplb_core.formats`` (one parser
per format in the project; both packages ship in the sidecar image).
"""

from __future__ import annotations

from typing import Literal

SourceName = Literal["table", "vllm-stats", "sglang", "trtllm"]
SOURCES: tuple[SourceName, ...] = ("table", "vllm-stats", "sglang", "trtllm")
