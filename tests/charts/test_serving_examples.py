"""examples/serving: SGLang, vLLM and TensorRT-LLM serving charts that use the eplb-sidecar
chart's load-source templates, rendered by the real helm and checked against what the
operator and the sidecar expect of them: the operator accepts each StatefulSet as a Restart
workload, each engine reads the start-up file the operator writes under the key it writes,
and the sidecar reads the load the engine writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from eplb_operator.api import crd, v1alpha1
from eplb_operator.api.validation import openapi_schema, validate
from eplb_operator.controller.restart_files import FILE_KEYS, VOLUME, config_map_name
from eplb_operator.controller.restart_pods import workload_problem
from tests.conftest import REPO

from .test_chart import K8S_VERSION, SIDECAR_CHART, by_kind, helm, render

EXAMPLE = REPO / "examples" / "serving"
SOURCES = {"sglang": "sglang", "vllm": "vllm-stats", "trtllm": "trtllm"}
SCHEMA = openapi_schema(yaml.safe_load((REPO / "crds" / crd.CRD_FILE).read_text()))


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example with its dependency in charts/, as `helm dependency update` leaves it."""
    copy = tmp_path_factory.mktemp("serving") / "serving"
    shutil.copytree(EXAMPLE, copy)
    shutil.copytree(SIDECAR_CHART, copy / "charts" / "eplb-sidecar")
    return copy


def flag(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"{name}="))


def mount_of(container: dict[str, Any], volume: str) -> str:
    return str(next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume))


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


@pytest.mark.parametrize("engine", sorted(SOURCES))
def test_the_serving_example_lints(chart: Path, engine: str) -> None:
    done = helm("lint", "--strict", "-f", str(chart / f"values-{engine}.yaml"), chart=chart)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("engine", sorted(SOURCES))
def test_the_serving_example_wires_engine_sidecar_and_operator(chart: Path, engine: str) -> None:
    docs = render("-f", str(chart / f"values-{engine}.yaml"), chart=chart)
    placement = by_kind(docs, "ExpertPlacement")[0]
    assert validate(SCHEMA, placement) == []
    spec = v1alpha1.ExpertPlacement.model_validate(placement).spec
    assert spec.engine == engine and spec.rollout.strategy == "Restart"
    assert spec.workload_ref is not None
    name = placement["metadata"]["name"]
    key = FILE_KEYS[engine]

    statefulsets = by_kind(docs, "StatefulSet")
    assert [s["metadata"]["name"] for s in statefulsets] == [
        spec.workload_ref.name_of(group) for group in ("0", "1")
    ]
    for statefulset in statefulsets:
        kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)
        assert workload_problem(statefulset, "StatefulSet") is None
        pod = statefulset["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert placement["spec"]["selector"]["matchLabels"].items() <= labels.items()
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == VOLUME)
        assert volume["configMap"]["name"] == config_map_name(name, 0)
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        engine_container, sidecar = containers["engine"], containers["eplb-sidecar"]
        # These sidecars move no weights: the engine keeps the node's ephemeral ports.
        assert "securityContext" not in pod["spec"]
        args, sidecar_args = engine_container["args"], sidecar["args"]
        env = env_of(engine_container)
        start_up = f"{mount_of(engine_container, VOLUME)}/{key}"
        stats = mount_of(engine_container, "eplb-stats")
        assert mount_of(sidecar, "eplb-stats") == stats
        assert flag(sidecar_args, "--source") == SOURCES[engine]
        assert flag(sidecar_args, "--layer-ids") == "3-60"
        assert spec.model.engine_layer_ids() == list(range(3, 61))
        if engine == "sglang":
            assert flag(args, "--init-expert-location") == start_up
            assert flag(args, "--expert-distribution-recorder-mode") == "stat"
            assert env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] == stats
            assert flag(sidecar_args, "--stats-path") == stats
            port = flag(args, "--port")
            assert flag(sidecar_args, "--engine-url") == f"http://127.0.0.1:{port}"
        elif engine == "vllm":
            assert "--enable-eplb" in args
            config = json.loads(flag(args, "--eplb-config"))
            assert config["read_stats_path"] == start_up
            assert config["write_stats_path"].startswith(f"{stats}/")
            assert config["num_redundant_experts"] == spec.topology.redundant_experts
            assert flag(sidecar_args, "--stats-path") == config["write_stats_path"]
        else:
            assert env["EXPERT_STATISTIC_PATH"] == stats == flag(sidecar_args, "--stats-path")
            assert flag(sidecar_args, "--placement-file") == start_up
            options = by_kind(docs, "ConfigMap")[0]
            kubernetes_validate.validate(options, K8S_VERSION, strict=True)
            moe_config = yaml.safe_load(options["data"]["options.yaml"])["moe_config"]
            assert moe_config["load_balancer"] == start_up
            options_path = flag(args, "--extra_llm_api_options")
            assert options_path.startswith(mount_of(engine_container, "llm-api-options"))


def test_an_engine_and_a_source_that_do_not_match_are_refused(chart: Path) -> None:
    done = helm("template", "--set", "engine=vllm", chart=chart)
    assert done.returncode != 0
    assert "engine vllm needs eplb-sidecar.source vllm-stats, not sglang" in done.stderr
