"""The operator's view of a local group's pods without Kubernetes (control-plane benchmarks)."""

from __future__ import annotations

from eplb_local.launch import LocalGroup
from eplb_operator.controller.endpoints import PodEndpoint


def local_endpoints(group: LocalGroup) -> dict[str, dict[int, PodEndpoint]]:
    """The operator's view of a local group's pods, without Pod objects (for benchmarks)."""
    return {
        group.config.group: {
            pod.rank: PodEndpoint(
                name=pod.name,
                uid=pod.name,
                group=group.config.group,
                rank=pod.rank,
                host="127.0.0.1",
                control_port=pod.control_port,
                metrics_port=pod.metrics_port,
                transfer_port=pod.transfer_port,
            )
            for pod in group.pods
        }
    }
