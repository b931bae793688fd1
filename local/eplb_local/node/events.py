"""Events about a pod, as the kubelet records them (``source.component: kubelet``)."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from eplb_local.kube.api import Api

log = logging.getLogger("eplb-local-node")


def record_event(api: Api, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """A core/v1 Event on ``pod`` (``kind``: Normal or Warning); a failure is only logged,
    as the kubelet's recorder drops what it cannot write."""
    meta = pod["metadata"]
    node = pod.get("spec", {}).get("nodeName") or ""
    moment = datetime.datetime.now(datetime.timezone.utc)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{int(moment.timestamp() * 1e9):x}",
                     "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet", "reportingInstance": node,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }  # fmt: skip
    reply = api.post(f"/api/v1/namespaces/{meta['namespace']}/events", body)
    if reply.code != 201:
        log.warning("event %s on %s: %s %s", reason, meta["name"], reply.code, reply.body)
