"""Where each pod's sidecar listens: control API, metrics and transfer store.

A pod's address is ``status.podIP``; ports come from the spec, and a pod annotation
(``eplb.io/control-port``, ``eplb.io/metrics-port``, ``eplb.io/transfer-port``) overrides
them, for pods on the host network or several sidecars behind one address.  Pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec

ANNOTATION_PREFIX = "eplb.io/"


@dataclass(frozen=True)
class PodEndpoint:
    name: str
    uid: str
    group: str
    rank: int
    host: str
    control_port: int
    metrics_port: int
    transfer_port: int

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def store(self) -> str:
        return f"{self.host}:{self.transfer_port}"


def endpoints(
    pods: list[dict[str, Any]], groups: dict[str, dict[int, str]], spec: ExpertPlacementSpec
) -> tuple[dict[str, dict[int, PodEndpoint]], list[str]]:
    """``groups[group][rank] = pod name`` (from :func:`check_pods`) → endpoints, and the
    names of pods that have no IP yet (not ready)."""
    by_name = {pod["metadata"]["name"]: pod for pod in pods}
    result: dict[str, dict[int, PodEndpoint]] = {}
    not_ready: list[str] = []
    for group, members in sorted(groups.items()):
        for rank, name in sorted(members.items()):
            pod = by_name[name]
            host = (pod.get("status") or {}).get("podIP")
            if not host:
                not_ready.append(name)
                continue
            notes = pod["metadata"].get("annotations") or {}

            def port(kind: str, default: int, notes: dict[str, str] = notes) -> int:
                return int(notes.get(f"{ANNOTATION_PREFIX}{kind}-port", default))

            result.setdefault(group, {})[rank] = PodEndpoint(
                name=name,
                uid=str(pod["metadata"].get("uid", "")),
                group=group,
                rank=rank,
                host=host,
                control_port=port("control", spec.pods.control_port),
                metrics_port=port("metrics", spec.pods.metrics_port),
                transfer_port=port("transfer", spec.pods.transfer_port),
            )
    return result, not_ready
