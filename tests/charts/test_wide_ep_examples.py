"""examples/wide-ep: the copyable serving manifests with 8 GPUs per pod (vLLM on a
StatefulSet, SGLang-style on a LeaderWorkerSet), rendered with the real helm, the sidecar
from the eplb-sidecar chart's templates, and accepted by the real API server (server-side
dry-run), the LeaderWorkerSet by its CRD and the LWS controller's admission webhooks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from eplb_local.kube.binaries import binary
from eplb_local.world import LocalKube
from eplb_operator.api import v1alpha1
from eplb_operator.controller.pods import check_pods
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "wide-ep"
VARIANTS = ["vllm-statefulset", "sglang-leaderworkerset"]

pytestmark = pytest.mark.slow


def render(tmp_path: Path, variant: str, namespace: str) -> list[dict[str, Any]]:
    chart = tmp_path / "wide-ep"
    shutil.copytree(EXAMPLE, chart)
    # What `helm dependency update` does with the file:// dependency.
    shutil.copytree(REPO / "charts" / "eplb-sidecar", chart / "charts" / "eplb-sidecar")
    helm = str(binary("helm"))
    values = ["-f", str(chart / f"values-{variant}.yaml")]
    lint = subprocess.run([helm, "lint", "--strict", str(chart), *values],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    done = subprocess.run([helm, "template", "deepseek-v3", str(chart), "--namespace", namespace,
                           *values],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod templates of the serving workload."""
    specs = []
    for doc in docs:
        if doc["kind"] == "StatefulSet":
            specs.append(doc["spec"]["template"])
        elif doc["kind"] == "LeaderWorkerSet":
            lws = doc["spec"]["leaderWorkerTemplate"]
            specs += [lws["leaderTemplate"], lws["workerTemplate"]]
    return specs


def dry_run(kube: LocalKube, namespace: str, docs: list[dict[str, Any]]) -> None:
    done = kube.kubectl("--namespace", namespace, "apply", "--dry-run=server", "-f", "-",
                        stdin=yaml.safe_dump_all(docs))  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_example_renders_eight_ranks_per_pod_and_the_api_server_accepts_it(
    variant: str, tmp_path: Path, kube: LocalKube, namespace: str
) -> None:
    docs = render(tmp_path, variant, namespace)
    (placement,) = [d for d in docs if d["kind"] == "ExpertPlacement"]
    model = v1alpha1.ExpertPlacement.model_validate(placement)
    assert model.spec.pods.ranks_per_pod == 8
    assert model.spec.topology.ranks == 16 and model.spec.topology.nodes == 2
    templates = pod_specs(docs)
    assert templates
    for template in templates:
        containers = {c["name"]: c for c in template["spec"]["containers"]}
        sidecar = containers.pop("eplb-sidecar")
        (engine,) = containers.values()
        assert engine["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert "nvidia.com/gpu" not in str(sidecar.get("resources")), "the sidecar takes no GPU"
        sysctls = template["spec"]["securityContext"].get("sysctls")
        if variant == "sglang-leaderworkerset":  # hot swap: one sidecar for the 8 tables
            assert "--ranks-per-pod=8" in sidecar["args"]
            # Peer transfers' ports: the pod's ephemeral range, after the store's port.
            assert "--transfer-port=29470" in sidecar["args"]
            assert sysctls == [{"name": "net.ipv4.ip_local_port_range", "value": "29471 29800"}]
            # It serves /healthz once the engine has loaded its model: the startupProbe
            # holds liveness off that long (else a restart, and the LWS recreates the group),
            # and the sidecar waits for the engine's tables as long.
            probe = sidecar["startupProbe"]
            window = probe["periodSeconds"] * probe["failureThreshold"]
            assert window >= 1800 and f"--wait-seconds={window}" in sidecar["args"]
        else:  # vLLM exports its own load file and takes placements at start-up
            assert "--source=vllm-stats" in sidecar["args"]
            assert sysctls is None  # no transfers: vLLM keeps the node's ephemeral ports
            assert any(a.startswith("--eplb-config=") for a in engine["args"])
        # The selector finds the serving pods (it is what the operator lists).
        labels = template["metadata"]["labels"]
        assert placement["spec"]["selector"]["matchLabels"].items() <= labels.items()

    workload = [d for d in docs if d["kind"] in ("StatefulSet", "LeaderWorkerSet")]
    if variant == "vllm-statefulset":
        assert model.spec.pods.rank_from == "StatefulSetOrdinal"
        assert model.spec.rollout.strategy == "Restart" and model.spec.engine == "vllm"
        assert workload[0]["spec"]["replicas"] == 2  # 16 ranks in pods of 8
        dry_run(kube, namespace, docs)
    else:
        kube.ensure_lws()  # its CRD and admission webhooks judge the LeaderWorkerSet
        assert model.spec.pods.rank_from == "LeaderWorkerSet"
        (lws,) = workload
        assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
        dry_run(kube, namespace, docs)


def test_leaderworkerset_pods_as_the_controller_labels_them_form_groups(tmp_path: Path) -> None:
    """What the operator makes of the pods the LeaderWorkerSet controller creates from this
    example (as it names and labels them; tests/operator/test_multi_rank.py runs the
    controller): two groups of two pods, pod i hosting ranks 8i … 8i+7."""
    docs = render(tmp_path, "sglang-leaderworkerset", "serving")
    (placement,) = [d for d in docs if d["kind"] == "ExpertPlacement"]
    spec = v1alpha1.ExpertPlacementSpec.model_validate(placement["spec"])
    pods = [
        {"metadata": {"name": f"deepseek-v3-{g}" + (f"-{w}" if w else ""),
                      "labels": {"leaderworkerset.sigs.k8s.io/name": "deepseek-v3",
                                 "leaderworkerset.sigs.k8s.io/group-index": str(g),
                                 "leaderworkerset.sigs.k8s.io/worker-index": str(w)}}}
        for g in range(2) for w in range(2)
    ]  # fmt: skip
    check = check_pods(pods, spec)
    assert check.consistent, check.problems
    assert check.groups == {"deepseek-v3-0": {0: "deepseek-v3-0", 1: "deepseek-v3-0-1"},
                            "deepseek-v3-1": {0: "deepseek-v3-1", 1: "deepseek-v3-1-1"}}  # fmt: skip
