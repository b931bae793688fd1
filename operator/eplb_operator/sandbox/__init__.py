"""Local stand-ins for a cluster's moving parts: Prometheus, the operator process, pods."""
