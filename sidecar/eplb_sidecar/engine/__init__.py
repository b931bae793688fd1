"""Pieces every engine of this project shares: its configuration, the probe of its outputs,
routing, paced serving, the start-up table and the weights derived from (seed, layer,
expert).  The reference engine built on them is local tooling (``eplb_local.engine``); the
Hugging Face adapter (``eplb_sidecar.adapters.transformers``) uses them too."""
