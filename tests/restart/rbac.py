"""What a Restart rollout needs beyond a hot-swap operator's rights.

tests/charts/test_rbac checks the rest of the chart's role against a hot-swap run; the
restart test checks that its run used these (and nothing else of workloads and ConfigMaps).
"""

from __future__ import annotations

from eplb_local.kube.audit import Access

RESTART_ACCESSES = {
    Access("apps", "statefulsets", "get"), Access("apps", "statefulsets", "patch"),
    Access("apps", "deployments", "get"), Access("apps", "deployments", "patch"),
    Access("leaderworkerset.x-k8s.io", "leaderworkersets", "get"),
    Access("leaderworkerset.x-k8s.io", "leaderworkersets", "patch"),
    Access("", "configmaps", "create"), Access("", "configmaps", "delete"),
}  # fmt: skip
