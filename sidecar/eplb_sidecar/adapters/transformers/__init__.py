"""The engine contract inside Hugging Face ``transformers`` MoE models (Mixtral, Qwen3-MoE,
DeepSeek-V3), one engine process per EP rank.

- :mod:`.models`: tiny configurations of the three architectures, random weights from a
  fixed seed (no download); the expert weights derive from (seed, layer, expert) alone.
- :mod:`.dispatch`: pure tensor functions: which slot serves each (token, choice).
- :mod:`.exchange`: the engines' process group (gloo on CPU, NCCL on GPU).
- :mod:`.experts`: the module that replaces each MoE block's ``experts``: the model's own
  router and block code run unchanged around it.
- :mod:`.engine`: :class:`~.engine.TransformersEngine`, an engine process: table, steps
  under the step lock, probes.

Importing this package does not import ``transformers``; :mod:`.models` and :mod:`.engine`
do.
"""
