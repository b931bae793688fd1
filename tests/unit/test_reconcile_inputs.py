"""What used to fail a reconcile pass silently (a log line, no condition, no Event) is now a
problem the reconciler reports: a load query with PromQL braces, a pod annotation that
names no port, a server on the control port that is not a sidecar.  No cluster needed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.endpoints import endpoints
from eplb_operator.controller.loads import DEFAULT_QUERY, PrometheusSource, fill_query
from eplb_sidecar.client import SidecarClient, SidecarError

SPEC = ExpertPlacementSpec.model_validate(
    {
        "selector": {"matchLabels": {"app": "moe"}},
        "model": {"layers": 2, "experts": 8},
        "topology": {"ranks": 2, "slotsPerRank": 5},
        "online": {},
    }
)
USER_QUERY = (
    'sum by (pod, layer, expert) (increase(eplb_expert_tokens_total{namespace="{namespace}", '
    'pod=~"{pods}"}[{window}]))'
)


def test_a_load_query_with_promql_braces_gets_only_its_placeholders_filled() -> None:
    source = PrometheusSource("http://prometheus:9090", 5, USER_QUERY)
    assert source.query("serving", ["moe-1", "moe-0"], 300) == (
        'sum by (pod, layer, expert) (increase(eplb_expert_tokens_total{namespace="serving", '
        'pod=~"moe\\\\-0|moe\\\\-1"}[300s]))'
    )
    assert DEFAULT_QUERY == USER_QUERY  # the default is written the way users write theirs


def test_placeholders_are_filled_once_and_other_braces_kept() -> None:
    template = 'x{a="{namespace}"} or y{b=~"{pods}", c="{unknown}"} offset {window}'
    values = {"{namespace}": "{pods}", "{pods}": "p", "{window}": "5m"}
    assert fill_query(template, values) == 'x{a="{pods}"} or y{b=~"p", c="{unknown}"} offset 5m'


def test_the_filled_query_sums_one_namespace_by_pod_layer_expert_in_real_promql(
    tmp_path: Path,
) -> None:
    """promtool evaluates the filled query over synthetic series with Prometheus's engine."""
    promtool = shutil.which("promtool")
    if promtool is None:  # never a skip: CI has it (scripts/setup.sh)
        pytest.fail("promtool not found: install the Debian package 'prometheus'")
    labels = 'layer="0",expert="1",slot="{slot}"'
    series = [
        ("serving", "moe-0", 0), ("serving", "moe-0", 3), ("serving", "moe-1", 0),
        ("other", "moe-0", 0), ("serving", "moe-10", 0),
    ]  # fmt: skip
    tests = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'eplb_expert_tokens_total{{namespace="{ns}",pod="{pod}",'
                        + labels.format(slot=slot)
                        + "}",
                        "values": "0+10x20",
                    }
                    for ns, pod, slot in series
                ],
                "promql_expr_test": [
                    {
                        "expr": PrometheusSource("http://p", 5, USER_QUERY).query(
                            "serving", ["moe-0", "moe-1"], 300
                        ),
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{pod="moe-0",layer="0",expert="1"}', "value": 100},
                            {"labels": '{pod="moe-1",layer="0",expert="1"}', "value": 50},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "query_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    run = subprocess.run(
        [promtool, "test", "rules", str(path)], check=False, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def pod(name: str, rank: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "annotations": annotations or {}},
        "status": {"podIP": f"10.0.0.{rank + 1}"},
    }


def test_a_port_annotation_that_names_no_port_is_a_problem_naming_pod_and_annotation() -> None:
    pods = [
        pod("moe-0", 0, {"eplb.io/control-port": "eighty"}),
        pod("moe-1", 1, {"eplb.io/metrics-port": "70000", "eplb.io/transfer-port": "-1"}),
        pod("moe-2", 0, {"eplb.io/control-port": "8080"}),
    ]
    found = endpoints(pods, {"a": {0: "moe-0", 1: "moe-1"}, "b": {0: "moe-2"}}, SPEC)
    assert found.problems == [
        "pod moe-0: annotation eplb.io/control-port='eighty' is not a port number (1-65535)",
        "pod moe-1: annotation eplb.io/metrics-port='70000' is not a port number (1-65535)",
        "pod moe-1: annotation eplb.io/transfer-port='-1' is not a port number (1-65535)",
    ]
    assert list(found.groups) == ["b"] and found.groups["b"][0].control_port == 8080
    assert found.groups["b"][0].metrics_port == SPEC.pods.metrics_port


def test_pods_without_an_ip_are_not_ready_not_problems() -> None:
    unready = {"metadata": {"name": "moe-1"}, "status": {}}
    found = endpoints([pod("moe-0", 0), unready], {"a": {0: "moe-0", 1: "moe-1"}}, SPEC)
    assert found.not_ready == ["moe-1"] and found.problems == []
    assert found.groups["a"][0].control_url == f"http://10.0.0.1:{SPEC.pods.control_port}"


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (401, b'{"error": "unauthorized", "code": 16}', "application/json"),
        (401, b"<html><body>401 Authorization Required</body></html>", "text/html"),
        (503, b'{"reason": "not camel case", "message": "x"}', "application/json"),
        (200, b'{"hello": "world"}', "application/json"),
        (200, b"\xff\xfe not even text", "application/octet-stream"),
    ],
    ids=["401-json", "401-html", "503-bad-reason", "200-foreign-json", "200-bytes"],
)
async def test_a_server_that_is_not_a_sidecar_is_a_sidecar_error_quoting_its_answer(
    status: int, body: bytes, content_type: str
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with SidecarClient(url, "token") as client:
            with pytest.raises(SidecarError) as refused:
                await client.info(placement=True)
    finally:
        await runner.cleanup()
    assert refused.value.status == status
    assert refused.value.problem.reason == "UnexpectedAnswer"
    assert f"HTTP {status}" in str(refused.value) and "not the sidecar's" in str(refused.value)
    assert body[:20].decode("utf-8", "replace") in str(refused.value)
