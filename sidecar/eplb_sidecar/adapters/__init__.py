"""Engine adapters: real model implementations that adopt the engine contract.

``transformers``: Hugging Face MoE models (Mixtral, Qwen3-MoE, DeepSeek-V3) served through
the expert table (needs the ``transformers`` extra).
"""
