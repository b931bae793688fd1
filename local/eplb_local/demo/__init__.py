"""``eplb demo``: the whole loop on one machine (API, pods, Prometheus, operator)."""
