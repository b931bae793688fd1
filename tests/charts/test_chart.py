"""The Helm chart, with the real helm 4 and kubectl binaries: lint, render, validate, RBAC."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from eplb_local.kube.binaries import binary
from eplb_operator.controller.election import ElectionSettings
from eplb_operator.controller.run import parse
from tests.conftest import REPO

CHART = REPO / "charts" / "eplb-operator"
SIDECAR_CHART = REPO / "charts" / "eplb-sidecar"
K8S_VERSION = "1.37"
NON_DEFAULT = [
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "metrics.podMonitor.enabled=true",
    "--set", "metrics.prometheusRule.enabled=true",
    "--set", "networkPolicy.enabled=true",
    "--set", "networkPolicy.groups={replica-0,replica-1}",
    "--set", "networkPolicy.namespaces={serving}",
    "--set", "operator.watchNamespaces={serving,serving-b}",
    "--set", "sidecar.auth.audience=eplb-sidecar-prod",
    "--set", "crds.keep=false",
]  # fmt: skip
PROMETHEUS_OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("helm")), *args[:1], *(["release", str(chart)] if args[0] == "template"
                                                 else [str(chart)]), *args[1:]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def render(*values: str, chart: Path = CHART) -> list[dict[str, Any]]:
    done = helm("template", "--namespace", "eplb-system", *values, chart=chart)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def release_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The release's objects, without Helm hooks (the uninstall hook's Job and its RBAC)."""
    return [d for d in docs if "helm.sh/hook" not in d["metadata"].get("annotations", {})]


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_the_chart_lints(values: list[str]) -> None:
    done = helm("lint", "--strict", *values)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_every_rendered_object_is_valid(values: list[str], tmp_path: Path) -> None:
    docs = render(*values)
    for doc in docs:
        if doc["kind"] in PROMETHEUS_OPERATOR_KINDS:
            continue  # no schema bundled for them: checked one by one below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "ServiceAccount", "Service", "CustomResourceDefinition"} <= kinds
    if values:
        assert PROMETHEUS_OPERATOR_KINDS | {"NetworkPolicy", "Role", "RoleBinding"} <= kinds
        rule = by_kind(docs, "PrometheusRule")[0]
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(yaml.safe_dump(rule["spec"]))
        promtool = shutil.which("promtool")
        assert promtool is not None, "promtool missing: scripts/setup.sh installs it"
        checked = subprocess.run([promtool, "check", "rules", str(rules_file)],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        pod_monitor = by_kind(docs, "PodMonitor")[0]["spec"]
        assert pod_monitor["selector"]["matchLabels"] == {"eplb.io/sidecar": "true"}
        assert pod_monitor["podMetricsEndpoints"][0]["port"] == "eplb-metrics"
        assert pod_monitor["sampleLimit"] > 0
        service_monitor = by_kind(docs, "ServiceMonitor")[0]["spec"]
        service = by_kind(docs, "Service")[0]
        assert service_monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
        assert service_monitor["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
    else:
        assert not kinds & PROMETHEUS_OPERATOR_KINDS  # off without prometheus-operator


def test_bad_values_are_refused_with_the_field_named() -> None:
    for setting, fragment in (("operator.recheckSeconds=0", "recheckSeconds"),
                              ("sidecar.controlPort=70000", "controlPort"),
                              ("unknownKey=1", "unknownKey")):  # fmt: skip
        done = helm("template", "--set", setting)
        assert done.returncode != 0 and fragment in done.stderr, done.stderr


def test_two_operator_replicas_elect_a_leader_hardened_and_probed() -> None:
    docs = render()
    deployment = by_kind(docs, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2
    # One pod at a time: the old leader gives its Lease up as it stops.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
    }  # fmt: skip
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] and context["runAsNonRoot"]
    assert not context["allowPrivilegeEscalation"]
    assert container["livenessProbe"] and container["readinessProbe"]
    args = container["args"]
    assert "--all-namespaces" in args
    assert {"--lease=release-eplb-operator-leader", "--lease-namespace=eplb-system",
            "--lease-duration=15", "--renew-deadline=10", "--retry-period=2"} <= set(args)  # fmt: skip
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # holderIdentity
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["selector"]["matchLabels"] == selector


def test_the_lease_role_is_least_privilege_in_the_release_namespace() -> None:
    docs = release_objects(render("--set", "operator.watchNamespaces={serving}"))
    roles = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Role")}
    role = roles["release-eplb-operator-leader-election"]
    assert role["metadata"]["namespace"] == "eplb-system"  # the Lease's, not the watched one
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["release-eplb-operator-leader"], "verbs": ["get", "update"]},
    ]  # fmt: skip
    others = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and d is not role]
    assert not any("leases" in rule["resources"] for d in others for rule in d["rules"])
    binding = next(d for d in by_kind(docs, "RoleBinding") if d["roleRef"]["name"] == (
        "release-eplb-operator-leader-election"))  # fmt: skip
    assert binding["subjects"][0]["name"] == "release-eplb-operator"
    named = render("--set", "operator.leaderElection.leaseName=my-lease")
    args = by_kind(named, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--lease=my-lease" in args


def test_one_replica_has_no_disruption_budget_and_no_election_means_one_recreated() -> None:
    single = render("--set", "operator.replicaCount=1")
    assert by_kind(single, "PodDisruptionBudget") == []  # it would block every node drain
    alone = render("--set", "operator.replicaCount=1", "--set",
                   "operator.leaderElection.enabled=false")  # fmt: skip
    deployment = by_kind(alone, "Deployment")[0]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [arg for arg in args if arg.startswith("--lease")]
    assert not [d for d in by_kind(alone, "Role") if "leader-election" in d["metadata"]["name"]]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["operator.leaderElection.enabled=false"], "needs operator.leaderElection.enabled"),
        (["operator.leaderElection.leaseDurationSeconds=10"], "must exceed renewDeadlineSeconds"),
        (["operator.leaderElection.retryPeriodSeconds=9"], "1.2 × retryPeriodSeconds"),
        (["operator.replicaCount=0"], "replicaCount"),
        (["operator.leaderElection.leaseName=Not_A_Name"], "leaseName"),
        (["operator.podDisruptionBudget.minAvailable=0"], "minAvailable"),
    ],
)
def test_bad_leader_election_values_are_refused(settings: list[str], fragment: str) -> None:
    done = helm("template", *[arg for setting in settings for arg in ("--set", setting)])
    assert done.returncode != 0 and fragment in done.stderr, done.stderr


def test_crds_are_installed_kept_or_left_out() -> None:
    crd = by_kind(render(), "CustomResourceDefinition")[0]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    unkept = by_kind(render("--set", "crds.keep=false"), "CustomResourceDefinition")[0]
    assert "annotations" not in unkept["metadata"]
    assert by_kind(render("--set", "crds.install=false"), "CustomResourceDefinition") == []
    generated = yaml.safe_load((REPO / "crds" / "expertplacements.eplb.io.yaml").read_text())
    assert crd["spec"] == generated["spec"]


def _reads_a_secret(doc: Any) -> list[str]:
    """Where ``doc`` names a Secret: the kind, secret volumes, secretKeyRef / secretRef, or
    RBAC rules on secrets."""
    found: list[str] = []
    if isinstance(doc, dict):
        if doc.get("kind") == "Secret":
            found.append(f"Secret {doc['metadata']['name']}")
        for key, value in doc.items():
            if key in ("secret", "secretKeyRef", "secretRef"):
                found.append(f"{key}: {value}")
            if key == "resources" and isinstance(value, list) and "secrets" in value:
                found.append(f"rule on secrets: {doc}")
            found += _reads_a_secret(value)
    elif isinstance(doc, list):
        for item in doc:
            found += _reads_a_secret(item)
    return found


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_no_template_makes_or_reads_a_secret(values: list[str]) -> None:
    docs = render(*values)
    assert [where for doc in docs for where in _reads_a_secret(doc)] == []
    # The operator proves itself with its own projected token for the sidecars' audience.
    audience = "eplb-sidecar-prod" if values else "eplb-sidecar"
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    sources = [s for v in pod["volumes"] for s in v.get("projected", {}).get("sources", [])]
    token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
    assert token["audience"] == audience
    assert token["expirationSeconds"] >= 600
    (operator,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    mount = next(m for m in operator["volumeMounts"] if m["name"] == "sidecar-token")
    assert env["EPLB_SIDECAR_TOKEN_FILE"] == f"{mount['mountPath']}/{token['path']}"
    # The right the sidecars' SubjectAccessReview asks for is the operator's alone.
    roles = by_kind(release_objects(docs), "Role" if values else "ClusterRole")
    rules = next(r for r in roles if r["metadata"]["name"] == "release-eplb-operator")["rules"]
    assert {"apiGroups": ["eplb.io"], "resources": ["expertplacements/rollout"],
            "verbs": ["update"]} in rules  # fmt: skip


def test_the_sidecar_library_chart_lints() -> None:
    done = helm("lint", "--strict", chart=SIDECAR_CHART)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_sidecar_injects_into_a_serving_chart(tmp_path: Path) -> None:
    serving = tmp_path / "vllm-ep"
    (serving / "templates").mkdir(parents=True)
    (serving / "charts").mkdir()
    shutil.copytree(SIDECAR_CHART, serving / "charts" / "eplb-sidecar")
    (serving / "Chart.yaml").write_text(
        "apiVersion: v2\nname: vllm-ep\nversion: 0.1.0\n"
        "dependencies:\n  - name: eplb-sidecar\n    version: 0.1.0\n"
    )
    (serving / "values.yaml").write_text(
        "eplb-sidecar:\n  checkpointPath: /models\n"
        "  securityContext: {runAsUser: 1000, runAsGroup: 1000}\n"
    )
    # A serving StatefulSet as users write it, with the library's named templates included.
    (serving / "templates" / "statefulset.yaml").write_text(
        """{{- $eplb := index .Subcharts "eplb-sidecar" }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: vllm-ep
spec:
  serviceName: vllm-ep
  replicas: 4
  selector:
    matchLabels: {app: vllm-ep}
  template:
    metadata:
      labels:
        app: vllm-ep
        {{- include "eplb-sidecar.podLabels" (dict "group" "replica-0") | nindent 8 }}
    spec:
      serviceAccountName: {{ include "eplb-sidecar.serviceAccountName" $eplb }}
      containers:
        - name: vllm
          image: vllm/vllm-openai:v0.11.0
          volumeMounts:
            {{- include "eplb-sidecar.engineVolumeMounts" $eplb | nindent 12 }}
        {{- include "eplb-sidecar.container" $eplb | nindent 8 }}
      volumes:
        {{- include "eplb-sidecar.volumes" $eplb | nindent 8 }}
"""
    )
    (serving / "templates" / "eplb-rbac.yaml").write_text(
        '{{- include "eplb-sidecar.rbac" (index .Subcharts "eplb-sidecar") }}\n'
    )
    docs = render(chart=serving)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert [where for doc in docs for where in _reads_a_secret(doc)] == []
    # The pods run as a ServiceAccount that may review tokens, and nothing more.
    (account,) = by_kind(docs, "ServiceAccount")
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "eplb-system"}]  # fmt: skip
    assert binding["metadata"]["name"].endswith("-eplb-system-eplb-sidecar-auth")
    statefulset = by_kind(docs, "StatefulSet")[0]
    kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)
    pod = statefulset["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert labels["eplb.io/sidecar"] == "true" and labels["eplb.io/group"] == "replica-0"
    assert "eplb.io/rank" not in labels  # ranks come from the workload, never one constant
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "eplb-sidecar")
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert "--checkpoint=/models" in sidecar["args"]
    assert {"--auth=kubernetes", "--audience=eplb-sidecar"} <= set(sidecar["args"])
    namespace = next(e for e in sidecar["env"] if e["name"] == "POD_NAMESPACE")
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert sidecar["image"] == "ghcr.io/eplb-k8s/eplb-sidecar:0.1.0"
    engine = next(c for c in pod["spec"]["containers"] if c["name"] == "vllm")
    table = next(v for v in pod["spec"]["volumes"] if v["name"] == "eplb-table")
    assert table["emptyDir"]["medium"] == "Memory"
    assert {m["name"] for m in engine["volumeMounts"]} == {"eplb-table"}
    # The securityContext is the user's to override, key by key (helm merges values).
    context = sidecar["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (1000, 1000)
    assert context["readOnlyRootFilesystem"] and context["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("*.Dockerfile")), ids=str)
def test_dockerfiles_are_multi_stage_pinned_non_root_and_copy_what_exists(
    dockerfile: Path,
) -> None:
    text = dockerfile.read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1))
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user and not user[-1].startswith(("0", "root"))
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which is missing"


def test_name_overrides_name_every_object() -> None:
    short = render("--set", "nameOverride=xpl")
    assert all(doc["metadata"]["name"].startswith("release-xpl") for doc in
               by_kind(short, "Deployment") + by_kind(short, "ServiceAccount"))  # fmt: skip
    full = render("--set", "fullnameOverride=eplb")
    names = {doc["metadata"]["name"] for doc in full if doc["kind"] != "CustomResourceDefinition"}
    assert names and all(name.startswith("eplb") for name in names), names
    labels = by_kind(short, "Deployment")[0]["spec"]["selector"]["matchLabels"]
    assert labels["app.kubernetes.io/name"] == "xpl"


@pytest.mark.parametrize("level", ["debug", "info", "warning"])
def test_the_log_level_and_election_reach_the_operator(level: str) -> None:
    deployment = by_kind(render("--set", f"operator.logLevel={level}"), "Deployment")[0]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # What the chart passes is what the image's entrypoint (controller/run.py) parses.
    options = parse(args)
    assert options.log_level == level
    assert options.all_namespaces and options.health_port == 8081
    assert options.election == ElectionSettings(
        "release-eplb-operator-leader", "eplb-system", options.identity, 15, 10, 2
    )


def _open_to_anyone(policies: list[dict[str, Any]], protocol: str) -> set[int]:
    """Ports of ``protocol`` the policies let any peer reach (rules without ``from``)."""
    ports: set[int] = set()
    for policy in policies:
        for rule in policy["spec"]["ingress"]:
            if "from" in rule:
                continue
            for port in rule["ports"]:
                if port.get("protocol", "TCP") != protocol:
                    continue
                if "port" not in port:
                    return set(range(1, 65536))
                ports |= set(range(port["port"], port.get("endPort", port["port"]) + 1))
    return ports


@pytest.mark.parametrize("groups", [[], ["--set", "networkPolicy.groups={replica-0}"]],
                         ids=["any-sidecar", "per-group"])  # fmt: skip
def test_network_policies_close_only_the_sidecars_ports(groups: list[str]) -> None:
    docs = render("--set", "networkPolicy.enabled=true", "--set", "sidecar.controlPort=9000",
                  *groups)  # fmt: skip
    policies = by_kind(docs, "NetworkPolicy")
    for policy in policies:
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
        assert policy["spec"]["podSelector"]["matchLabels"]["eplb.io/sidecar"] == "true"
    # The engine's serving port, anything but the sidecar's: open, as if no policy selected
    # the pod.  Control and the transfer ports (the store, then gloo's and NCCL's, the pods'
    # ephemeral range up to transferPortEnd): only from whom they serve.
    transfer = set(range(29470, 29801))
    assert _open_to_anyone(policies, "TCP") == set(range(1, 65536)) - {9000} - transfer
    assert _open_to_anyone(policies, "UDP") == set(range(1, 65536))
    peers = [rule for policy in policies for rule in policy["spec"]["ingress"]
             if rule.get("from") and "eplb.io/sidecar" in str(rule["from"])]  # fmt: skip
    assert peers and all(
        rule["ports"] == [{"port": 29470, "endPort": 29800, "protocol": "TCP"}] for rule in peers
    )
    control = [
        rule for policy in policies for rule in policy["spec"]["ingress"]
        if {"port": 9000, "protocol": "TCP"} in rule.get("ports", [])
    ]  # fmt: skip
    assert len(control) == 1 and len(control[0]["from"]) == 1
    assert "app.kubernetes.io/name" in control[0]["from"][0]["podSelector"]["matchLabels"]
    done = helm("template", "--set", "networkPolicy.enabled=true", "--set",
                "sidecar.metricsPort=8470")  # fmt: skip
    assert done.returncode != 0 and "must differ" in done.stderr


def test_watched_namespaces_get_roles_and_kopf_flags_not_cluster_wide_reads() -> None:
    docs = release_objects(render("--set", "operator.watchNamespaces={serving-a,serving-b}"))
    roles, bindings = (
        _not_the_lease(by_kind(docs, "Role")),
        _not_the_lease(by_kind(docs, "RoleBinding")),
    )
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["serving-a", "serving-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["serving-a", "serving-b"]
    assert roles[0]["rules"] == roles[1]["rules"]
    # Cluster-wide, only what kopf cannot read per namespace.
    (cluster,) = by_kind(docs, "ClusterRole")
    assert {r for rule in cluster["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions", "namespaces"}  # fmt: skip
    (operator,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    flags = [a for a in operator["args"] if a.startswith(("--namespace", "--all-namespaces"))]
    assert flags == ["--namespace=serving-a", "--namespace=serving-b"]
    # Empty: every namespace, one ClusterRole with the same rules as each Role.
    everywhere = release_objects(render())
    assert _not_the_lease(by_kind(everywhere, "Role")) == []
    (cluster_wide,) = by_kind(everywhere, "ClusterRole")
    assert cluster_wide["rules"][: len(roles[0]["rules"])] == roles[0]["rules"]


def _not_the_lease(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Without the leader-election Role (or its binding), which lives beside the operator."""
    return [o for o in objects if not o["metadata"]["name"].endswith("-leader-election")]


def test_uninstall_first_stands_the_operator_down_with_rights_for_that_alone() -> None:
    hooks = [d for d in render() if d not in release_objects(render())]
    assert {d["kind"] for d in hooks} == {"ServiceAccount", "Role", "RoleBinding", "Job"}
    for hook in hooks:
        annotations = hook["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    (role,) = by_kind(hooks, "Role")
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"],
         "resourceNames": ["release-eplb-operator"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]  # fmt: skip
    (job,) = by_kind(hooks, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1] == "eplb_operator.controller.stand_down"
    assert "--deployment=release-eplb-operator" in container["args"]
    assert by_kind(render("--set", "standDownOnUninstall=false"), "Job") == []
