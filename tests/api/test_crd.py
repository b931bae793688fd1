"""The ExpertPlacement API: generated CRD, its rules, the models, and the examples."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_operator.api import crd, v1alpha1
from eplb_operator.api.validation import openapi_schema, validate

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds" / crd.CRD_FILE).read_text())
SCHEMA = openapi_schema(CRD)

VALID: dict[str, Any] = {
    "apiVersion": "eplb.io/v1alpha1",
    "kind": "ExpertPlacement",
    "metadata": {"name": "ds"},
    "spec": {
        "selector": {"matchLabels": {"app": "ds"}},
        "model": {"layers": 58, "experts": 256, "groups": 8},
        "topology": {"ranks": 32, "redundantExperts": 32, "nodes": 4},
        "online": {},
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = obj["spec"]
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


def test_committed_crd_is_generated_from_the_models() -> None:
    chart = REPO / "charts" / "eplb-operator"
    check = subprocess.run(
        [sys.executable, "-m", "eplb_operator.api.crd", "--check", "--dir", str(REPO / "crds"),
         "--chart", str(chart)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert (REPO / "crds" / crd.CRD_FILE).read_text() == crd.render()
    chart_copy = chart / "templates" / "crds" / crd.CRD_FILE
    assert chart_copy.read_text() == crd.render_chart_template()


def test_crd_shape_follows_api_conventions() -> None:
    version = CRD["spec"]["versions"][0]
    assert CRD["spec"]["names"]["shortNames"] == ["xpl"]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"] for column in version["additionalPrinterColumns"]}
    assert {"Ready", "Balancedness", "Revision", "Layers", "Age"} <= columns
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert {"observedGeneration", "lastTransitionTime", "reason"} <= conditions["items"][
        "properties"
    ].keys()


def leaves(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)] if path else []
    for name, child in schema.get("properties", {}).items():
        found += leaves(child, f"{path}.{name}" if path else name)
    if "items" in schema:  # list items are described by their list; their fields are not
        found += [(p, n) for p, n in leaves(schema["items"], f"{path}[]") if p != f"{path}[]"]
    return found


def test_every_spec_field_is_documented_for_kubectl_explain() -> None:
    undocumented = [
        path
        for path, node in leaves(SCHEMA["properties"]["spec"], "spec")
        if not node.get("description")
    ]
    assert undocumented == []


def test_no_floats_in_spec() -> None:
    floats = [
        path
        for path, node in leaves(SCHEMA["properties"]["spec"], "spec")
        if node.get("type") == "number"
    ]
    assert floats == []


def test_spec_gives_the_policy_its_topology() -> None:
    spec = v1alpha1.ExpertPlacement.model_validate(VALID).spec
    topology = spec.placement_topology()
    assert (
        topology.num_slots,
        topology.slots_per_rank,
        topology.num_nodes,
        topology.num_groups,
    ) == (
        288,
        9,
        4,
        8,
    )
    sandbox = v1alpha1.ExpertPlacement.model_validate(
        yaml.safe_load((REPO / "examples" / "sandbox.yaml").read_text())
    ).spec.placement_topology()
    assert (sandbox.num_experts, sandbox.num_ranks, sandbox.slots_per_rank) == (16, 4, 5)


# A Restart rollout of SGLang engines (its workloadRef varies by case).
RESTART: dict[str, Any] = {"engine": "sglang", "rollout__strategy": "Restart"}


def test_a_leaderworkerset_is_a_restart_workload() -> None:
    obj = with_spec(**RESTART, pods__rankFrom="LeaderWorkerSet",
                    workloadRef={"kind": "LeaderWorkerSet", "name": "moe"})  # fmt: skip
    assert validate(SCHEMA, obj) == []
    ref = v1alpha1.ExpertPlacement.model_validate(obj).spec.workload_ref
    assert ref is not None and (ref.kind, ref.name_of("moe-0")) == ("LeaderWorkerSet", "moe")


def test_defaults_are_filled_in() -> None:
    assert validate(SCHEMA, VALID) == []
    model = v1alpha1.ExpertPlacement.model_validate(VALID)
    assert model.spec.rollout.layers_per_step == 4
    assert model.spec.pods.rank_label == "eplb.io/rank"
    assert model.spec.online is not None and model.spec.online.interval_seconds == 300


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"topology__slotsPerRank": 9},
            "set exactly one of topology.slotsPerRank and topology.redundantExperts",
        ),
        (
            {"topology__redundantExperts": None},
            "set exactly one of topology.slotsPerRank and topology.redundantExperts",
        ),
        ({"topology__nodes": 3}, "topology.nodes must divide topology.ranks"),
        ({"model__groups": 7}, "model.groups must divide model.experts"),
        ({"topology__redundantExperts": 30}, "must be a multiple of topology.ranks"),
        (
            {"topology__redundantExperts": None, "topology__slotsPerRank": 7},
            "must be at least model.experts",
        ),
        ({"online": None}, "set offline, online, or both"),
        ({"pods__ranksPerPod": 6}, "pods.ranksPerPod must divide topology.ranks"),
        (
            {**RESTART, "workloadRef": {"kind": "LeaderWorkerSet", "name": "moe"}},
            "workloadRef kind LeaderWorkerSet needs pods.rankFrom LeaderWorkerSet",
        ),
        (
            {
                **RESTART,
                "pods__rankFrom": "LeaderWorkerSet",
                "workloadRef": {"kind": "LeaderWorkerSet", "name": "moe-{group}"},
            },
            "a LeaderWorkerSet holds every EP group",
        ),
        (
            {
                **RESTART,
                "pods__rankFrom": "LeaderWorkerSet",
                "workloadRef": {"kind": "LeaderWorkerSet", "name": "moe", "apiVersion": "apps/v1"},
            },
            "apiVersion is apps/v1 for a StatefulSet or Deployment, leaderworkerset.x-k8s.io/v1",
        ),
    ],
)
def test_cross_field_rules_reject_with_their_message(changes: dict[str, Any], message: str) -> None:
    obj = with_spec(**changes)
    violations = validate(SCHEMA, obj)
    assert any(message in v.message for v in violations), violations
    with pytest.raises(
        pydantic.ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        v1alpha1.ExpertPlacement.model_validate(obj)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"topology__ranks": 0}, "spec.topology.ranks"),
        ({"model__experts": "many"}, "spec.model.experts"),
        ({"online": {"slackPermille": 1500}}, "spec.online.slackPermille"),
        ({"online": {"mode": "random"}}, "spec.online.mode"),
        ({"pods": {"controlPort": 70000}}, "spec.pods.controlPort"),
        ({"pods": {"rankFrom": "PodName"}}, "spec.pods.rankFrom"),
        ({"pods": {"ranksPerPod": 0}}, "spec.pods.ranksPerPod"),
    ],
)
def test_schema_rejects_bad_fields_naming_them(changes: dict[str, Any], field: str) -> None:
    violations = validate(SCHEMA, with_spec(**changes))
    assert [v.field for v in violations] == [field]
    with pytest.raises(pydantic.ValidationError):
        v1alpha1.ExpertPlacement.model_validate(with_spec(**changes))


def example_placements() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "ExpertPlacement":
                found.append((path.name, document))
    return found


@pytest.mark.parametrize(
    ("name", "obj"), example_placements(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_examples_are_valid(name: str, obj: dict[str, Any]) -> None:
    assert validate(SCHEMA, obj) == [], name
    v1alpha1.ExpertPlacement.model_validate(obj)


def test_examples_cover_offline_online_and_sandbox() -> None:
    names = {name for name, _ in example_placements()}
    assert {"offline-gitops.yaml", "online-deepseek-v3.yaml", "sandbox.yaml"} <= names


def test_offline_example_is_what_eplb_plan_writes(tmp_path: Path) -> None:
    output = tmp_path / "offline-gitops.yaml"
    script = Path(sys.executable).parent / "eplb"
    subprocess.run(
        [
            str(script),
            "plan",
            "--stats",
            str(REPO / "examples/stats/tiny-moe.json"),
            "--ranks",
            "4",
            "--redundant",
            "4",
            "--output",
            str(output),
            "--name",
            "tiny-moe",
        ],
        check=True,
        capture_output=True,
    )
    assert output.read_text() == (REPO / "examples" / "offline-gitops.yaml").read_text()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
spec_keys = st.sampled_from(
    [
        "selector",
        "pods",
        "model",
        "topology",
        "offline",
        "online",
        "rollout",
        "metrics",
        "rebalance",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(spec_keys, json_values, max_size=6), st.booleans())
def test_malformed_specs_are_rejected_with_a_reason_never_a_crash(
    spec: dict[str, Any], base: bool
) -> None:
    obj = copy.deepcopy(VALID)
    obj["spec"] = {**obj["spec"], **spec} if base else spec
    violations = validate(SCHEMA, obj)
    try:
        v1alpha1.ExpertPlacement.model_validate(obj)
        model_accepts = True
    except pydantic.ValidationError as error:
        model_accepts = False
        assert str(error)
    for violation in violations:
        assert violation.message
    # The models and the CRD agree (the models also refuse unknown fields, which a
    # structural schema would prune instead).
    if model_accepts:
        assert violations == []
