"""What the operator and the sidecar share, and neither owns: the engines' file formats
(vLLM, SGLang, TensorRT-LLM load statistics and start-up files), the placement facts both
sides check (the start-up placement, a placement's validity) and the input error.  Pure:
tensors, files and text in, tensors and text out; it imports neither side."""
