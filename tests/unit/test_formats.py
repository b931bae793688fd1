import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from eplb_operator.errors import InvalidInputError
from eplb_operator.formats.mappings import PlacementDocument, read_placement, render
from eplb_operator.formats.stats import read_stats
from eplb_operator.placement import Topology, rebalance
from eplb_operator.workloads import drifting_windows

WINDOWS = drifting_windows(3, 4, 16, seed=5)  # [T, L, E]


def write_all_formats(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    ours = tmp_path / "ours.json"
    ours.write_text(
        json.dumps(
            {"num_layers": 4, "num_experts": 16, "model": "m", "windows": WINDOWS.long().tolist()}
        )
    )
    paths["json"] = ours
    sglang_json = tmp_path / "sglang.json"
    sglang_json.write_text(json.dumps({"logical_count": WINDOWS.long().tolist()}))
    paths["sglang-json"] = sglang_json
    sglang_pt = tmp_path / "sglang.pt"
    torch.save({"logical_count": WINDOWS.long(), "rank": 0}, sglang_pt)
    paths["sglang-pt"] = sglang_pt
    vllm = tmp_path / "stats.safetensors"
    save_file({"org/model": WINDOWS.sum(0).float()}, str(vllm))
    paths["vllm"] = vllm
    trtllm = tmp_path / "expert_statistic"
    trtllm.mkdir()
    (trtllm / "meta_info.json").write_text(
        json.dumps({"num_experts": 16, "num_experts_per_token": 2})
    )
    # Two ranks each saw half the tokens; layers keep their model ids (3..6: dense layers first).
    for rank in range(2):
        half = {
            f"{t}_{layer + 3}": (WINDOWS[t, layer] / 2).float()
            for t in range(3)
            for layer in range(4)
        }
        save_file(half, str(trtllm / f"rank{rank}.safetensors"))
    paths["trtllm"] = trtllm
    return paths


def test_every_format_reads_the_same_load(tmp_path: Path) -> None:
    for name, path in write_all_formats(tmp_path).items():
        stats = read_stats(path)
        assert torch.allclose(stats.load, WINDOWS.sum(0).double()), name
        assert (stats.num_layers, stats.num_experts) == (4, 16)
    assert read_stats(tmp_path / "stats.safetensors").model == "org/model"
    assert read_stats(tmp_path / "expert_statistic").layer_ids == [3, 4, 5, 6]
    assert read_stats(tmp_path / "ours.json").windows.shape == (3, 4, 16)


def test_shared_traces_are_readable(shared_traces: list[Path]) -> None:
    for path in shared_traces:
        stats = read_stats(path)
        assert stats.windows.dim() == 3 and stats.load.sum() > 0


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('{"windows": [[[1, -2]]]}', "auto", "negative count at window 0, layer 0, expert 1"),
        ('{"windows": [[[1, 2], [3]]]}', "auto", "not a regular"),
        ('{"num_layers": 3, "windows": [[[1, 2]]]}', "json", "num_layers is 3 but windows have 1"),
        ('{"something": 1}', "auto", "neither 'windows'"),
        ("not json", "auto", "not a stats file"),
        ('{"logical_count": [[]]}', "sglang", "empty"),
        ('{"logical_count": [1, 2]}', "sglang", "got 1 dimensions"),
        ('{"windows": [[[1, NaN]]]}', "json", "NaN or infinity"),
    ],
)
def test_bad_stats_are_rejected_with_a_reason(
    tmp_path: Path, content: str, fmt: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_stats(path, fmt)  # type: ignore[arg-type]


def test_vllm_file_with_two_models_is_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "two.safetensors"
    save_file({"a": torch.ones(2, 4), "b": torch.ones(2, 4)}, str(path))
    with pytest.raises(InvalidInputError, match="one tensor keyed by model name"):
        read_stats(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        read_stats(tmp_path / "nope.json")


@pytest.mark.parametrize("fmt", ["expertplacement", "sglang", "trtllm"])
def test_mappings_round_trip_and_are_byte_stable(tmp_path: Path, fmt: str) -> None:
    topology = Topology(16, 4, 5)
    phy2log = rebalance(WINDOWS.sum(0), topology)
    doc = PlacementDocument(phy2log, [3, 4, 5, 6], "m", 16, 4, 5, 1, 1)
    text = render(doc, fmt, "demo")  # type: ignore[arg-type]
    assert render(doc, fmt, "demo") == text  # type: ignore[arg-type]
    path = tmp_path / f"out.{fmt}"
    path.write_text(text)
    back = read_placement(path)
    assert torch.equal(back.phy2log, phy2log)
    if fmt != "sglang":  # SGLang's map has no layer ids
        assert back.layer_ids == [3, 4, 5, 6]


def test_expertplacement_output_is_a_configmap_and_a_cr(tmp_path: Path) -> None:
    import yaml

    doc = PlacementDocument(
        rebalance(WINDOWS.sum(0), Topology(16, 4, 5)), [0, 1, 2, 3], "m", 16, 4, 5, 2, 1
    )
    documents = list(yaml.safe_load_all(render(doc, "expertplacement", "demo")))
    config_map, placement = documents
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "demo-mapping"
    assert placement["kind"] == "ExpertPlacement" and placement["apiVersion"] == "eplb.io/v1alpha1"
    assert placement["spec"]["offline"]["configMapRef"] == {
        "name": "demo-mapping",
        "key": "placement.json",
    }
    assert placement["spec"]["topology"] == {"ranks": 4, "slotsPerRank": 5, "nodes": 1}
    # One layer per line in the mapping, so Git diffs name the layers that changed.
    mapping = config_map["data"]["placement.json"]
    assert len([line for line in mapping.splitlines() if line.startswith("  [")]) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "not a placement"),
        ('{"physical_to_logical_map": [[0, 1], [2]]}', "not a regular"),
        ('{"physical_to_logical_map": [[0.5, 1]]}', "integer expert ids"),
        ("initial_global_assignments: []\n", "must map layer"),
        (": : :", "neither JSON nor YAML"),
    ],
)
def test_bad_placements_are_rejected(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_placement(path)
