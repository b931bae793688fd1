"""The operator reports a spec that does not match the live pods as Degraded."""

from __future__ import annotations

from typing import Any

import pytest
from kopf.testing import KopfRunner

from eplb_local.kube.api import Api
from eplb_local.world import LocalKube
from tests.cluster.conftest import eventually, placement, xpl_path


def pod(name: str, group: str, rank: int | str | None) -> dict[str, Any]:
    """A pod of the EP group ``group`` at ``rank``, whose container just waits."""
    labels = {"app": "ds", "eplb.io/group": group}
    if rank is not None:
        labels["eplb.io/rank"] = str(rank)
    container = {"name": "wait", "image": "local/wait",
                 "command": ["python3", "-c", "import time; time.sleep(3600)"]}  # fmt: skip
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 0}}  # fmt: skip


def test_fewer_pods_than_ranks_is_degraded_until_fixed(
    kube: LocalKube, api: Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.setenv("EPLB_RECHECK_SECONDS", "1")
    monkeypatch.setenv("EPLB_METRICS_PORT", "0")
    pods, xpl = f"/api/v1/namespaces/{namespace}/pods", xpl_path(namespace)

    def degraded() -> dict[str, Any]:
        conditions = api.get(f"{xpl}/ds").body.get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Degraded"), {})

    for rank in range(3):
        api.checked("POST", pods, pod(f"g1-{rank}", "g1", rank))
    api.checked("POST", pods, pod("stray", "g1", 9))
    args = ["run", "--standalone", "--namespace", namespace, "-m",
            "eplb_operator.controller.handlers"]  # fmt: skip
    with KopfRunner(args, timeout=90) as runner:
        api.checked("POST", xpl, placement())  # 4 ranks
        eventually(lambda: degraded().get("status") == "True", 60)
        condition = degraded()
        assert condition["reason"] == "PodsInconsistent"
        assert "group g1 has 3 of 4 ranks (missing rank 3)" in condition["message"]
        assert "pod stray has rank 9, outside 0..3" in condition["message"]
        assert condition["observedGeneration"] == 1
        first_transition = condition["lastTransitionTime"]
        api.delete(f"{pods}/stray")
        api.checked("POST", pods, pod("g1-3", "g1", 3))
        # Whole groups now; what is missing next is a sidecar in those pods.
        eventually(lambda: degraded().get("reason") not in (None, "PodsInconsistent"), 60)
        waiting = degraded()
        assert waiting["status"] == "True"
        assert waiting["lastTransitionTime"] == first_transition  # still Degraded=True
    assert runner.exception is None, runner.output
