"""Where each pod's sidecar listens: control API, metrics and transfer store.

A pod's address is ``status.podIP``; ports come from the spec, and a pod annotation
(``eplb.io/control-port``, ``eplb.io/metrics-port``, ``eplb.io/transfer-port``) overrides
them, for pods on the host network or several sidecars behind one address; an annotation
that names no port is a problem of that pod, reported, never a crash.  Pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Endpoints:
    """``groups[group][rank]``: the endpoint of each pod that can be reached; ``not_ready``:
    pods without an IP yet; ``problems``: what is wrong with the others (a bad annotation)."""

    groups: dict[str, dict[int, PodEndpoint]] = field(default_factory=dict)
    not_ready: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def endpoints(
    pods: list[dict[str, Any]], groups: dict[str, dict[int, str]], spec: ExpertPlacementSpec
) -> Endpoints:
    """``groups[group][rank] = pod name`` (from :func:`check_pods`) → endpoints."""
    by_name = {pod["metadata"]["name"]: pod for pod in pods}
    found = Endpoints()
    defaults = {
        "control": spec.pods.control_port,
        "metrics": spec.pods.metrics_port,
        "transfer": spec.pods.transfer_port,
    }
    for group, members in sorted(groups.items()):
        for rank, name in sorted(members.items()):
            pod = by_name[name]
            host = (pod.get("status") or {}).get("podIP")
            if not host:
                found.not_ready.append(name)
                continue
            notes = pod["metadata"].get("annotations") or {}
            ports = {kind: _port(notes, kind, default) for kind, default in defaults.items()}
            bad = [
                f"pod {name}: annotation {ANNOTATION_PREFIX}{kind}-port={port!r} is not a port "
                f"number (1-65535)"
                for kind, port in ports.items()
                if not isinstance(port, int)
            ]
            if bad:
                found.problems += bad
                continue
            found.groups.setdefault(group, {})[rank] = PodEndpoint(
                name=name,
                uid=str(pod["metadata"].get("uid", "")),
                group=group,
                rank=rank,
                host=host,
                control_port=int(ports["control"]),
                metrics_port=int(ports["metrics"]),
                transfer_port=int(ports["transfer"]),
            )
    return found


def _port(notes: dict[str, str], kind: str, default: int) -> int | str:
    """The port an annotation names (else ``default``), or the annotation's text when it
    names none."""
    text = notes.get(f"{ANNOTATION_PREFIX}{kind}-port")
    if text is None:
        return default
    text = str(text)
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    return text
