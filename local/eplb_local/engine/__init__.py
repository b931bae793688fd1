"""The reference MoE engine (``eplb-sidecar engine``): a real, small torch MoE implementing
the engine contract, and checks of its tables against the model it serves.  What the tests,
the sandbox and most benchmarks run as the engine; never in an image."""
