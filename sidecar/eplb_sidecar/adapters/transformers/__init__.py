"""The engine contract inside Hugging Face ``transformers`` MoE models (Mixtral, Qwen3-MoE,
DeepSeek-V3), one engine process per EP rank (docs/engine-contract.md walks through it).

- :mod:`.options`: which model and its shape, checked (no ``transformers`` import).
- :mod:`.models`: the library's model classes in tiny configurations, random weights from a
  fixed seed (no download); routed experts derive from (seed, layer, expert) alone.
- :mod:`.dispatch`: pure tensor functions: which slot serves each (token, choice).
- :mod:`.exchange`: the engines' process group (gloo on CPU, NCCL on GPU).
- :mod:`.experts`: the module that replaces each MoE block's ``experts``; the model's own
  router and block code run unchanged around it.
- :mod:`.engine`: :class:`~.engine.TransformersEngine`, one engine process: its table, the
  group's rounds under the step lock, probes.
- :mod:`.prompts`, :mod:`.probe`: what the engine serves and answers.
- :mod:`.main`: ``eplb-sidecar engine --implementation transformers``.
"""
