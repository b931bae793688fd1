"""The ports of peer transfers, as both charts render them: the serving pod's ephemeral range
(net.ipv4.ip_local_port_range = transferPort+1 … transferPortEnd, from the eplb-sidecar
chart) is exactly what the operator chart's NetworkPolicy allows between peers besides the
store's own port, and nothing else reaches it; bad ranges are refused with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .test_chart import CHART, K8S_VERSION, SIDECAR_CHART, _open_to_anyone, by_kind, helm, render

SERVING_POD = """{{- $eplb := index .Subcharts "eplb-sidecar" }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: moe
spec:
  serviceName: moe
  replicas: 2
  selector:
    matchLabels: {app: moe}
  template:
    metadata:
      labels:
        app: moe
        {{- include "eplb-sidecar.podLabels" (dict "group" "replica-0") | nindent 8 }}
    spec:
      securityContext:
        fsGroup: 65532
        {{- include "eplb-sidecar.podSysctls" $eplb | nindent 8 }}
      containers:
        - name: engine
          image: vllm/vllm-openai:v0.11.0
          volumeMounts:
            {{- include "eplb-sidecar.engineVolumeMounts" $eplb | nindent 12 }}
        {{- include "eplb-sidecar.container" $eplb | nindent 8 }}
      volumes:
        {{- include "eplb-sidecar.volumes" $eplb | nindent 8 }}
"""


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A serving chart that injects the sidecar as the chart's comments say."""
    chart = tmp_path_factory.mktemp("serving") / "moe"
    (chart / "templates").mkdir(parents=True)
    shutil.copytree(SIDECAR_CHART, chart / "charts" / "eplb-sidecar")
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: moe\nversion: 0.1.0\n"
        "dependencies:\n  - name: eplb-sidecar\n    version: 0.1.0\n"
    )
    (chart / "templates" / "statefulset.yaml").write_text(SERVING_POD)
    return chart


def pod_spec(chart: Path, *settings: str) -> dict[str, Any]:
    docs = render(*[arg for s in settings for arg in ("--set", f"eplb-sidecar.{s}")], chart=chart)
    (statefulset,) = by_kind(docs, "StatefulSet")
    kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)
    return dict(statefulset["spec"]["template"]["spec"])


def ephemeral_range(pod: dict[str, Any]) -> range:
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"].get("sysctls", [])}
    first, last = map(int, sysctls["net.ipv4.ip_local_port_range"].split())
    return range(first, last + 1)


def test_the_two_charts_default_to_the_same_ports() -> None:
    sidecar = yaml.safe_load((SIDECAR_CHART / "values.yaml").read_text())
    operator = yaml.safe_load((CHART / "values.yaml").read_text())["sidecar"]
    for key in ("controlPort", "metricsPort", "transferPort", "transferPortEnd"):
        assert sidecar[key] == operator[key], key
    # A few hundred ephemeral ports: transfers and the engine share them (values.yaml).
    assert 200 <= sidecar["transferPortEnd"] - sidecar["transferPort"] <= 1000


def test_a_pod_whose_sidecar_moves_weights_gets_the_transfer_range(serving: Path) -> None:
    pod = pod_spec(serving)
    assert pod["securityContext"] == {
        "fsGroup": 65532,
        "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "29471 29800"}],
    }
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "eplb-sidecar"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports["eplb-transfer"] == 29470 == ephemeral_range(pod).start - 1
    assert "--transfer-port=29470" in sidecar["args"]
    # Another range, and sysctls of the pod's own after ours (one `sysctls:` list).
    moved = pod_spec(serving, "transferPort=40000", "transferPortEnd=40511",
                     "extraSysctls[0].name=net.ipv4.ip_local_reserved_ports",
                     "extraSysctls[0].value=40100")  # fmt: skip
    assert ephemeral_range(moved) == range(40001, 40512)
    assert moved["securityContext"]["sysctls"][1] == {
        "name": "net.ipv4.ip_local_reserved_ports", "value": "40100"}  # fmt: skip


@pytest.mark.parametrize("source", ["vllm-stats", "sglang", "trtllm"])
def test_a_sidecar_that_moves_no_weights_leaves_the_ports_alone(serving: Path, source: str) -> None:
    pod = pod_spec(serving, f"source={source}")
    assert pod["securityContext"] == {"fsGroup": 65532}


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["transferPortEnd=29470"], "transferPortEnd (29470) must be above transferPort (29470)"),
        (["transferPortEnd=29000"], "transferPortEnd (29000) must be above transferPort"),
        (["transferPortEnd=65536"], "range 29471-65536 must lie within 1024-65535"),
        (["transferPort=800", "transferPortEnd=2000"], "range 801-2000 must lie within 1024-65535"),
        (["metricsPort=29600"], "metricsPort 29600 lies in the transfer ports 29470-29800"),
        (["controlPort=29800"], "controlPort 29800 lies in the transfer ports 29470-29800"),
        (["controlPort=9470"], "controlPort and metricsPort are both 9470"),
    ],
)
def test_bad_transfer_ranges_are_refused_with_the_reason(
    serving: Path, settings: list[str], fragment: str
) -> None:
    done = helm("template", *[a for s in settings for a in ("--set", f"eplb-sidecar.{s}")],
                chart=serving)  # fmt: skip
    assert done.returncode != 0 and fragment in done.stderr, done.stderr


LAYOUTS = {
    "default": {},
    # The control port above the range, metrics below, a range ending at the last port.
    "reordered": {
        "controlPort": 61000,
        "metricsPort": 2000,
        "transferPort": 64000,
        "transferPortEnd": 65535,
    },
    "narrow": {"transferPort": 20000, "transferPortEnd": 20063},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("groups", [[], ["replica-0", "replica-1"]], ids=["any", "per-group"])
def test_the_policy_opens_the_transfer_range_to_peers_exactly(
    serving: Path, layout: str, groups: list[str]
) -> None:
    ports = LAYOUTS[layout]
    pod = pod_spec(serving, *[f"{key}={value}" for key, value in ports.items()])
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "eplb-sidecar"]
    declared = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    settings = ["--set", "networkPolicy.enabled=true"]
    settings += [a for key, value in ports.items() for a in ("--set", f"sidecar.{key}={value}")]
    if groups:
        settings += ["--set", f"networkPolicy.groups={{{','.join(groups)}}}"]
    policies = by_kind(render(*settings), "NetworkPolicy")
    for policy in policies:
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)

    transfer = {declared["eplb-transfer"], *ephemeral_range(pod)}
    peer_rules = [
        (policy, rule) for policy in policies for rule in policy["spec"]["ingress"]
        if "from" in rule and "namespaceSelector" not in rule["from"][0]
    ]  # fmt: skip
    assert len(peer_rules) == max(1, len(groups))
    for policy, rule in peer_rules:
        (allowed,) = rule["ports"]
        assert set(range(allowed["port"], allowed["endPort"] + 1)) == transfer
        (peer,) = rule["from"]
        assert peer["podSelector"]["matchLabels"]["eplb.io/sidecar"] == "true"
        # Per group, a group's pods reach only their own group's range.
        selected = policy["spec"]["podSelector"]["matchLabels"]
        assert peer["podSelector"]["matchLabels"] == selected
    if groups:
        assert sorted(p["spec"]["podSelector"]["matchLabels"]["eplb.io/group"]
                      for p, _ in peer_rules) == groups  # fmt: skip
    # Everything else is open to anyone: the engine's ports, and the sidecar's metrics.
    closed = {declared["eplb-control"]} | transfer
    assert _open_to_anyone(policies, "TCP") == set(range(1, 65536)) - closed


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["sidecar.transferPortEnd=29470"], "sidecar.transferPortEnd (29470) must be above"),
        (["sidecar.controlPort=29500"], "sidecar.controlPort 29500 lies in the transfer ports"),
        (["sidecar.transferPortEnd=70000"], "transferPortEnd"),  # the values schema
    ],
)
def test_the_operator_chart_refuses_a_bad_range(settings: list[str], fragment: str) -> None:
    args = ["--set", "networkPolicy.enabled=true"]
    args += [a for s in settings for a in ("--set", s)]
    done = helm("template", *args)
    assert done.returncode != 0 and fragment in done.stderr, done.stderr
