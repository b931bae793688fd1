"""The operator reports a spec that does not match the live pods as Degraded."""

from __future__ import annotations

from typing import Any

import pytest
from kopf.testing import KopfRunner

from eplb_operator.cluster import LocalCluster
from tests.cluster.conftest import XPL, Api, eventually, placement

PODS = "/api/v1/namespaces/default/pods"


def pod(name: str, group: str, rank: int | str | None) -> dict[str, Any]:
    labels = {"app": "ds", "eplb.io/group": group}
    if rank is not None:
        labels["eplb.io/rank"] = str(rank)
    return {"metadata": {"name": name, "labels": labels}, "spec": {"containers": []}}


def degraded(api: Api) -> dict[str, Any] | None:
    conditions = api.get(f"{XPL}/ds").body.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Degraded"), None)


def test_fewer_pods_than_ranks_is_degraded_until_fixed(
    cluster: LocalCluster, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("EPLB_RECHECK_SECONDS", "1")
    for rank in range(3):
        api.post(PODS, pod(f"g1-{rank}", "g1", rank))
    api.post(PODS, pod("stray", "g1", 9))
    args = [
        "run",
        "--standalone",
        "--namespace",
        "default",
        "-m",
        "eplb_operator.controller.handlers",
    ]
    with KopfRunner(args, timeout=60) as runner:
        api.post(XPL, placement())  # 4 ranks
        eventually(lambda: (degraded(api) or {}).get("status") == "True")
        condition = degraded(api)
        assert condition is not None and condition["reason"] == "PodsInconsistent"
        assert "group g1 has 3 of 4 ranks (missing rank 3)" in condition["message"]
        assert "pod stray has rank 9, outside 0..3" in condition["message"]
        assert condition["observedGeneration"] == 1
        first_transition = condition["lastTransitionTime"]
        api.delete(f"{PODS}/stray")
        api.post(PODS, pod("g1-3", "g1", 3))
        # Whole groups now; the next thing missing is the pods' addresses (no kubelet here).
        eventually(lambda: (degraded(api) or {}).get("reason") == "PodsNotReady")
        waiting = degraded(api)
        assert waiting is not None and "have no IP yet" in waiting["message"]
        assert waiting["lastTransitionTime"] == first_transition  # still Degraded=True
    assert runner.exception is None, runner.output
