"""The reference MoE engine: a real (small) torch MoE that implements the engine contract."""
