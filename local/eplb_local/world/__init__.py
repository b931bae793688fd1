"""The local world the demo, the tests and the benchmarks run in: a real control plane with
its node (``LocalKube``), the operator installed by its Helm chart, and serving replicas of
the reference engine with the sidecar injected by the eplb-sidecar chart (``World``)."""

from eplb_local.world.kube import LocalKube
from eplb_local.world.world import ServingPod, World

__all__ = ["LocalKube", "ServingPod", "World"]
