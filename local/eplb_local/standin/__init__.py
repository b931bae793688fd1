"""Stand-in engines: processes that take the start-up files and write the load outputs of
SGLang, vLLM and TensorRT-LLM exactly as those engines do, without a model or a GPU.

Each serves a simulated token stream (:mod:`.routing`) through the placement it loaded at
start, and records load in its engine's own format (``eplb_core.formats`` documents
them): SGLang's expert-distribution recorder dumps (:mod:`.sglang`), vLLM's
``write_stats_path`` JSONL (:mod:`.vllm`), TensorRT-LLM's ``EXPERT_STATISTIC_PATH`` files
(:mod:`.trtllm`).  Flags are the engines' own where they matter to EPLB (the start-up
file, the recorder, the stats paths, EP size, ports); the simulated model and workload have
``--standin-*`` flags.  ``python -m eplb_local.standin sglang|vllm|trtllm …``.
"""
