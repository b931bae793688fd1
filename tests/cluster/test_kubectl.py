"""The real kubectl 1.37 against the real API server: apply, get, explain, and what the
server refuses (CEL rules, unknown fields, bad names, missing namespaces, huge objects)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from eplb_local.kube.api import Api
from eplb_local.world import LocalKube
from tests.cluster.conftest import placement, xpl_path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def examples_namespaces(kube: LocalKube) -> Iterator[None]:
    """The examples name their namespaces: made here, deleted after."""
    for name in ("inference", "eplb-demo"):
        kube.kubectl("create", "namespace", name)
    yield
    for example in EXAMPLES:
        kube.kubectl("delete", "--ignore-not-found", "-f", str(example))
    for name in ("inference", "eplb-demo"):
        kube.kubectl("delete", "namespace", name, "--wait=false")


def test_apply_every_example_twice(kube: LocalKube, examples_namespaces: None) -> None:
    for example in EXAMPLES:
        first = kube.kubectl("apply", "-f", str(example))
        assert first.returncode == 0, first.stderr
        again = kube.kubectl("apply", "-f", str(example))
        assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    names = kube.kubectl("get", "xpl", "-A", "-o", "name")
    assert set(names.stdout.split()) >= {
        "expertplacement.eplb.io/tiny-moe",
        "expertplacement.eplb.io/sandbox",
        "expertplacement.eplb.io/deepseek-v3",
    }
    mapping = kube.kubectl(
        "get", "configmap", "tiny-moe-mapping", "-o", "jsonpath={.data.placement\\.json}"
    )
    assert '"phy2log"' in mapping.stdout


def test_get_shows_the_printer_columns(kubectl: Kubectl, api: Api, namespace: str) -> None:
    assert api.post(xpl_path(namespace), placement("sandbox")).code == 201
    status = {
        "status": {
            "observedGeneration": 1,
            "phase": "Ready",
            "balancedness": 0.97,
            "currentRevision": "sandbox-3",
            "layersCommitted": 8,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "RolloutComplete",
                    "lastTransitionTime": "2026-11-23T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
        }
    }
    reply = api.merge(f"{xpl_path(namespace)}/sandbox/status", status)
    assert reply.code == 200, reply.body
    table = kubectl("get", "xpl")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == [
        "NAME", "READY", "PHASE", "RANKS", "PER-POD", "BALANCEDNESS", "REVISION", "LAYERS", "AGE"
    ]  # fmt: skip
    # 4 ranks (topology.ranks), 1 per pod (spec.pods defaulted by the API server).
    assert row.split()[:8] == ["sandbox", "True", "Ready", "4", "1", "0.97", "sandbox-3", "8"]
    wide = kubectl("get", "xpl", "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, row = wide.stdout.splitlines()[:2]
    assert "RANK-FROM" in header.split() and "Label" in row.split()


def write(tmp_path: Path, manifest: dict[str, object]) -> str:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def test_the_server_refuses_a_cel_violation_with_the_crds_message(
    kubectl: Kubectl, api: Api, namespace: str, tmp_path: Path
) -> None:
    manifest = placement(topology={"ranks": 4, "slotsPerRank": 5, "redundantExperts": 4})
    result = kubectl("apply", "-f", write(tmp_path, manifest))
    assert result.returncode != 0
    assert "set exactly one of topology.slotsPerRank and topology.redundantExperts" in result.stderr
    assert api.get(xpl_path(namespace)).body["items"] == []


def test_an_unknown_field_is_refused_by_strict_validation_and_pruned_otherwise(
    kubectl: Kubectl, api: Api, namespace: str, tmp_path: Path
) -> None:
    manifest = placement(rollout={"layersPerStepp": 2})  # a typo
    strict = kubectl("apply", "--validate=strict", "-f", write(tmp_path, manifest))
    assert strict.returncode != 0
    assert 'unknown field "spec.rollout.layersPerStepp"' in strict.stderr
    lenient = kubectl("apply", "--validate=ignore", "-f", write(tmp_path, manifest))
    assert lenient.returncode == 0, lenient.stderr
    stored = api.get(f"{xpl_path(namespace)}/ds").body
    assert "layersPerStepp" not in stored["spec"]["rollout"]  # pruned by the schema
    assert stored["spec"]["rollout"]["layersPerStep"] == 4  # the server's default


def test_bad_names_missing_namespaces_and_huge_objects_are_refused(
    api: Api, namespace: str
) -> None:
    bad_name = placement("Not_A_DNS_Name")
    reply = api.post(xpl_path(namespace), bad_name)
    assert reply.code == 422 and "metadata.name" in reply.body["message"]
    reply = api.post(xpl_path("no-such-namespace"), placement())
    assert reply.code == 404 and 'namespaces "no-such-namespace" not found' in reply.body["message"]
    huge = placement()
    huge["metadata"]["annotations"] = {"note": "x" * (3 << 20)}  # past the 1.5 MiB request limit
    reply = api.post(xpl_path(namespace), huge)
    assert reply.code in (413, 422), reply.code
    assert api.get(xpl_path(namespace)).body["items"] == []


def test_explain_shows_the_models_descriptions(kubectl: Kubectl) -> None:
    result = kubectl("explain", "xpl.spec.topology")
    assert result.returncode == 0, result.stderr
    assert "EP ranks (GPUs) in one serving replica." in result.stdout
    assert "redundantExperts" in result.stdout


def test_the_status_subresource_ignores_spec_and_the_main_resource_ignores_status(
    api: Api, namespace: str
) -> None:
    assert api.post(xpl_path(namespace), placement()).code == 201
    path = f"{xpl_path(namespace)}/ds"
    api.merge(path, {"status": {"phase": "Sneaky"}})
    assert "status" not in api.get(path).body or api.get(path).body["status"].get("phase") is None
    api.merge(
        f"{path}/status", {"spec": {"rollout": {"layersPerStep": 7}}, "status": {"phase": "X"}}
    )
    body = api.get(path).body
    assert body["spec"]["rollout"]["layersPerStep"] == 4 and body["status"]["phase"] == "X"
    assert json.dumps(body)  # a plain JSON object


@pytest.mark.parametrize(
    ("model", "field", "message"),
    [
        ({"layerIds": [3, 4, 5, 6]}, None, None),
        ({"layerIds": [3, 4, 5, 6], "hiddenLayers": 7}, None, None),
        ({"layerIds": list(range(1024 - 4, 1024)), "hiddenLayers": 1024}, None, None),
        ({"layerIds": [3, 5, 4, 6]}, "spec.model", "must be in increasing order"),
        ({"layerIds": [3, 3, 4, 5]}, "spec.model.layerIds[1]", "Duplicate value: 3"),
        ({"layerIds": [3, 4, 5]}, "spec.model", "one engine layer id per MoE layer"),
        ({"layerIds": [3, 4, 5, 6], "hiddenLayers": 6}, "spec.model", "hiddenLayers counts every"),
        ({"hiddenLayers": 3}, "spec.model", "hiddenLayers counts every"),
    ],
)
def test_the_server_and_our_validation_agree_on_layer_ids(
    api: Api, namespace: str, model: dict[str, object], field: str | None, message: str | None
) -> None:
    """The CRD's rules on spec.model's layers, as the real API server applies them (its CEL
    list library's isSorted() and max(), the set list type) and as `eplb` and the models
    check them (api.validation): same verdict, same field, same message."""
    from eplb_operator.api.validation import openapi_schema, validate

    crd = yaml.safe_load((REPO / "crds" / "expertplacements.eplb.io.yaml").read_text())
    manifest = placement(model={"layers": 4, "experts": 16, **model})
    manifest["metadata"]["namespace"] = namespace
    reply = api.call("POST", f"{xpl_path(namespace)}?dryRun=All", manifest)
    ours = validate(openapi_schema(crd), manifest)
    if field is None:
        assert reply.code == 201, reply.body
        assert ours == []
        return
    assert reply.code == 422, reply.body
    causes = reply.body["details"]["causes"]
    assert [(cause["field"], message in cause["message"]) for cause in causes] == [(field, True)]
    assert [(v.field, message in v.message) for v in ours] == [(field, True)]
