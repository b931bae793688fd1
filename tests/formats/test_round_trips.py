"""Engine file → ``eplb plan`` → the engine's format, for DeepSeek-V3 (61 layers, the first 3
dense), Qwen3-30B-A3B and Mixtral-8x7B: layer ids and dense layers right, checked with each
engine's loader semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from eplb_core.formats.layers import LayerRequest
from eplb_core.formats.stats import ReadOptions, read_stats
from eplb_operator.api.v1alpha1 import ExpertPlacement
from eplb_operator.api.validation import openapi_schema, validate
from eplb_operator.formats.mappings import read_placement
from eplb_operator.placement.views import imbalance
from tests.conftest import REPO
from tests.formats.conftest import plan_summary, run_plan
from tests.formats.engines import (
    SHAPES,
    Routing,
    Shape,
    sglang_dump,
    shuffled_map,
    startup_map,
    trtllm_balancer_yaml,
    trtllm_statistics,
    vllm_jsonl,
    vllm_safetensors,
)
from tests.formats.loaders import (
    sglang_init_expert_location,
    trtllm_load_balancer,
    vllm_read_stats,
)

SOURCES = ["vllm-jsonl", "vllm-jsonl-inline", "vllm-safetensors", "sglang", "trtllm"]


def engine_file(source: str, routing: Routing, directory: Path) -> Path:
    if source == "vllm-jsonl":
        return vllm_jsonl(routing, directory / "baseline.jsonl")
    if source == "vllm-jsonl-inline":
        return vllm_jsonl(routing, directory / "stats.jsonl", revision="inline")
    if source == "vllm-safetensors":
        return vllm_safetensors(routing, directory / "load.safetensors")
    if source == "sglang":
        return sglang_dump(routing, directory)
    return trtllm_statistics(routing, directory / "expert_statistic")


def topology_flags(shape: Shape) -> list[str]:
    return [
        "--ranks", str(shape.ranks), "--redundant", str(shape.redundant),
        "--nodes", str(shape.nodes),
    ]  # fmt: skip


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("source", SOURCES)
def test_every_engine_file_reads_as_the_routed_load_on_the_engine_layer_ids(
    shape_name: str, source: str, routings: dict[str, Routing], tmp_path: Path
) -> None:
    routing = routings[shape_name]
    shape = routing.shape
    path = engine_file(source, routing, tmp_path)
    stats = read_stats(path, options=ReadOptions(LayerRequest.from_flags(shape.preset)))
    assert stats.layer_ids == shape.moe_layer_ids
    assert stats.hidden_layers == shape.hidden_layers
    assert not stats.layer_ids_assumed
    assert np.array_equal(stats.load, routing.true_load())
    if source in ("sglang", "trtllm"):  # these name their layers themselves
        unaided = read_stats(path)
        assert unaided.layer_ids == shape.moe_layer_ids and not unaided.layer_ids_assumed
        assert np.array_equal(unaided.load, stats.load)


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_engine_files_round_trip_to_what_sglang_and_trtllm_serve(
    shape_name: str, routings: dict[str, Routing], tmp_path: Path
) -> None:
    routing = routings[shape_name]
    shape = routing.shape
    maps, balancers = [], []
    for source in ("vllm-jsonl", "sglang", "trtllm"):
        directory = tmp_path / source
        directory.mkdir()
        stats = engine_file(source, routing, directory)
        flags = ["--stats", stats, "--model", shape.preset, *topology_flags(shape)]
        sglang_map, balancer = directory / "map.json", directory / "moe_load_balancer.yaml"
        plan_summary(*flags, "--output", sglang_map, "--output-format", "sglang")
        plan_summary(*flags, "--output", balancer, "--output-format", "trtllm")
        maps.append(sglang_map.read_bytes())
        balancers.append(balancer.read_bytes())
    # The same routing, whatever engine counted it, gives the same placement.
    assert maps[0] == maps[1] == maps[2]
    assert balancers[0] == balancers[1] == balancers[2]

    directory = tmp_path / "trtllm"
    table = sglang_init_expert_location(
        directory / "map.json", shape.hidden_layers, shape.experts, shape.redundant, shape.ranks
    )
    start_up = startup_map(shape.slots, shape.experts)
    for dense in range(shape.first_moe_layer):
        assert table[dense].tolist() == start_up.tolist()
    options = directory / "extra_llm_api_options.yaml"
    options.write_text(
        yaml.safe_dump(
            {"enable_attention_dp": True, "moe_config": {"load_balancer": "moe_load_balancer.yaml"}}
        )
    )
    served = trtllm_load_balancer(options, shape.ranks, shape.moe_layer_ids)
    moe_rows = table[shape.moe_layer_ids]
    assert [served[layer] for layer in shape.moe_layer_ids] == moe_rows.tolist()
    # What the engines serve balances the recorded load better than the start-up placement.
    load = torch.from_numpy(routing.true_load()).double()
    before = imbalance(load, torch.from_numpy(np.tile(start_up, (len(moe_rows), 1))), shape.ranks)
    after = imbalance(load, torch.from_numpy(moe_rows), shape.ranks)
    assert float(after.mean()) < float(before.mean())


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_vllm_output_is_the_fleet_window_vllm_reads_back(
    shape_name: str, routings: dict[str, Routing], tmp_path: Path
) -> None:
    routing = routings[shape_name]
    shape = routing.shape
    dump = sglang_dump(routing, tmp_path)
    fleet = tmp_path / "fleet.jsonl"
    flags = ["--model", shape.preset, *topology_flags(shape)]
    plan_summary("--stats", dump, *flags, "--output", fleet, "--output-format", "vllm")
    layers = len(shape.moe_layer_ids)
    logical = vllm_read_stats(fleet, layers, shape.redundant)
    assert np.array_equal(logical, routing.true_load())
    # eplb reads its own vLLM output back as the same load, and plans the same placement.
    again = tmp_path / "again.json"
    plan_summary("--stats", fleet, *flags, "--output", again, "--output-format", "sglang")
    first = tmp_path / "first.json"
    plan_summary("--stats", dump, *flags, "--output", first, "--output-format", "sglang")
    assert again.read_bytes() == first.read_bytes()


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_expertplacement_carries_the_engine_layer_ids(
    shape_name: str, routings: dict[str, Routing], tmp_path: Path
) -> None:
    routing = routings[shape_name]
    shape = routing.shape
    stats = engine_file("trtllm", routing, tmp_path)
    output = tmp_path / "placement.yaml"
    plan_summary(
        "--stats", stats, "--model", shape.preset, *topology_flags(shape), "--output", output
    )
    config_map, placement = yaml.safe_load_all(output.read_text())
    schema = openapi_schema(
        yaml.safe_load((REPO / "crds" / "expertplacements.eplb.io.yaml").read_text())
    )
    assert validate(schema, placement) == []
    spec = ExpertPlacement.model_validate(placement).spec
    assert spec.model.engine_layer_ids() == shape.moe_layer_ids
    assert spec.model.hidden_layers == shape.hidden_layers
    mapping = json.loads(config_map["data"]["placement.json"])
    assert mapping["layerIds"] == shape.moe_layer_ids
    doc = read_placement(output)
    # What the operator does with the ConfigMap: the spec's layers, matched by layer id.
    rows = doc.rows_for(spec.model.engine_layer_ids(), "the mapping")
    assert rows.shape == (len(shape.moe_layer_ids), shape.slots)


def test_trtllm_balancer_slots_fold_back_to_experts_with_the_yaml_in_force(
    routings: dict[str, Routing], tmp_path: Path
) -> None:
    routing = routings["mixtral-8x7b"]
    shape = routing.shape
    in_force = {
        layer: row.tolist()
        for layer, row in zip(shape.moe_layer_ids, shuffled_map(shape, seed=3), strict=True)
    }
    stats = trtllm_statistics(routing, tmp_path / "stats", balancer=in_force)
    balancer = trtllm_balancer_yaml(in_force, tmp_path / "in_force.yaml")
    recorded = read_placement(balancer)
    for request in (LayerRequest.from_flags(shape.preset), LayerRequest()):
        stats_read = read_stats(stats, options=ReadOptions(request, recorded=recorded))
        assert stats_read.num_experts == shape.experts
        assert np.array_equal(stats_read.load, routing.true_load())
    output = tmp_path / "next.yaml"
    summary = plan_summary(
        "--stats", stats, "--model", shape.preset, "--previous", balancer,
        *topology_flags(shape), "--output", output, "--output-format", "trtllm",
    )  # fmt: skip
    assert [layer["layer"] for layer in summary["layers"]] == shape.moe_layer_ids
    served = yaml.safe_load(output.read_text())["initial_global_assignments"]
    assert sorted(served) == shape.moe_layer_ids


def test_summaries_skip_layers_that_counted_nothing(tmp_path: Path) -> None:
    windows = np.array([[[5, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 9]]])
    stats = tmp_path / "stats.json"
    stats.write_text(
        json.dumps({"windows": windows.tolist(), "layer_ids": [1, 2, 3], "hidden_layers": 4})
    )
    summary = plan_summary(
        "--stats", stats, "--ranks", "2", "--redundant", "0", "--output", tmp_path / "m.json",
        "--output-format", "sglang",
    )  # fmt: skip
    assert summary["layers_without_tokens"] == [2]
    assert [layer["layer"] for layer in summary["layers"]] == [1, 3]
    before = [layer["imbalance_before"] for layer in summary["layers"]]
    assert summary["imbalance_before"] == pytest.approx(sum(before) / 2)
    table = json.loads((tmp_path / "m.json").read_text())["physical_to_logical_map"]
    assert len(table) == 4 and table[0] == [0, 1, 2, 3]  # layer 0 is dense


def test_previous_names_the_layers_that_vllm_stats_do_not(
    routings: dict[str, Routing], tmp_path: Path
) -> None:
    routing = routings["deepseek-v3"]
    shape = routing.shape
    stats = vllm_jsonl(routing, tmp_path / "baseline.jsonl")
    flags = ["--stats", stats, *topology_flags(shape)]
    in_service = tmp_path / "in_service.yaml"
    plan_summary(
        *flags, "--model", shape.preset, "--output", in_service, "--output-format", "trtllm"
    )
    # No --model: the TensorRT-LLM file in service names layers 3..60.
    sglang_map = tmp_path / "map.json"
    summary = plan_summary(
        *flags, "--groups", "8", "--previous", in_service, "--output", sglang_map,
        "--output-format", "sglang",
    )  # fmt: skip
    assert summary["moves"] == 0
    assert [layer["layer"] for layer in summary["layers"]] == shape.moe_layer_ids
    table = sglang_init_expert_location(
        sglang_map, shape.hidden_layers, shape.experts, shape.redundant, shape.ranks
    )
    served = yaml.safe_load(in_service.read_text())["initial_global_assignments"]
    assert all(table[layer].tolist() == served[layer] for layer in shape.moe_layer_ids)
    # SGLang's map has a row per hidden layer: it cannot say which 58 rows the stats are.
    result = run_plan(*flags, "--previous", sglang_map, "--output", tmp_path / "x.yaml")
    assert result.exit_code == 2 and "give --model, or --first-moe-layer" in result.stderr
