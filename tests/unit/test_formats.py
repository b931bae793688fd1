import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from eplb_core.errors import InvalidInputError
from eplb_core.formats.counts import fold_slots
from eplb_core.formats.layers import LayerRequest, resolve_layers
from eplb_core.formats.loadstats import MAX_WINDOWS, StepWindow, WindowAccumulator
from eplb_core.formats.stats import ReadOptions, read_stats
from eplb_operator.formats.mappings import (
    PlacementDocument,
    parse_placement,
    read_placement,
    render,
)
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
    # SGLang rows are hidden layers: give it layers 0..3 all MoE.
    sglang_json = tmp_path / "sglang.json"
    sglang_json.write_text(json.dumps({"logical_count": WINDOWS.long().tolist()}))
    paths["sglang-json"] = sglang_json
    sglang_pt = tmp_path / "sglang.pt"
    torch.save({"logical_count": WINDOWS.int(), "rank": 0}, sglang_pt)
    paths["sglang-pt"] = sglang_pt
    vllm = tmp_path / "stats.safetensors"
    save_file({"org/model": WINDOWS.sum(0).float()}, str(vllm), metadata={"version": "1"})
    paths["vllm"] = vllm
    trtllm = tmp_path / "expert_statistic"
    trtllm.mkdir()
    (trtllm / "meta_info.json").write_text(
        json.dumps({"num_experts": 16, "num_experts_per_token": 2})
    )
    # Two ranks each saw half the tokens; keys carry the model's layer ids 0..3.
    for rank in range(2):
        half = {
            f"{t}_{layer}": (WINDOWS[t, layer] / 2).float() for t in range(3) for layer in range(4)
        }
        save_file(half, str(trtllm / f"rank{rank}.safetensors"))
    paths["trtllm"] = trtllm
    return paths


def test_every_format_reads_the_same_load_by_content_not_name(tmp_path: Path) -> None:
    for name, path in write_all_formats(tmp_path).items():
        disguised = path.with_name("stats" + name) if path.is_file() else path
        if path.is_file():
            path.rename(disguised)  # no suffix left to go by
        stats = read_stats(disguised)
        assert np.allclose(stats.load, WINDOWS.sum(0).double().numpy()), name
        assert (stats.num_layers, stats.num_experts) == (4, 16)
        assert stats.layer_ids == [0, 1, 2, 3]
    assert read_stats(tmp_path / "statsvllm").model == "org/model"
    assert read_stats(tmp_path / "statsjson").windows.shape == (3, 4, 16)
    assert read_stats(tmp_path / "statsjson").layer_ids_assumed
    assert not read_stats(tmp_path / "expert_statistic").layer_ids_assumed


def test_shared_traces_are_readable(shared_traces: list[Path]) -> None:
    for path in shared_traces:
        stats = read_stats(path)
        assert stats.windows.ndim == 3 and stats.load.sum() > 0


def vllm_lines(*records: dict[str, object]) -> str:
    meta = {
        "record_type": "eplb_load_meta", "version": 1, "model": "m", "num_ranks": 2,
        "num_groups": 1, "num_nodes": 1, "num_layers": 2, "num_redundant_experts": 2,
    }  # fmt: skip
    return "\n".join(json.dumps(r) for r in (meta, *records)) + "\n"


def stats_record(step: int, load: list[list[int]], p2l: list[list[int]]) -> dict[str, object]:
    return {"record_type": "eplb_load_stats", "version": 1, "step": step,
            "expert_load": load, "p2l_map": p2l}  # fmt: skip


def test_vllm_jsonl_folds_each_record_with_its_own_map_and_selects_steps(tmp_path: Path) -> None:
    path = tmp_path / "baseline.jsonl"
    path.write_text(
        vllm_lines(
            # 4 experts on 6 slots; step 1 on the start-up map, step 2 after a rearrangement.
            stats_record(1, [[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 1, 1]], [[0, 1, 2, 3, 0, 1]] * 2),
            stats_record(
                2,
                [[10, 20, 30, 40, 50, 60], [1, 1, 1, 1, 1, 1]],
                [[3, 3, 2, 1, 0, 0], [0, 1, 2, 3, 3, 3]],
            ),
        )
    )
    stats = read_stats(path)
    assert stats.steps == (1, 2) and stats.model == "m" and stats.source_format == "vllm"
    assert stats.windows[0].tolist() == [[6, 8, 3, 4], [1, 1, 0, 0]]
    assert stats.windows[1].tolist() == [[110, 40, 30, 30], [1, 1, 1, 3]]
    only_second = read_stats(path, options=ReadOptions(steps=StepWindow.parse("2:")))
    assert only_second.steps == (2,) and np.array_equal(only_second.windows[0], stats.windows[1])
    ids = read_stats(path, options=ReadOptions(LayerRequest.from_flags(first_moe_layer=1)))
    assert ids.layer_ids == [1, 2] and ids.hidden_layers == 3


def test_vllm_jsonl_of_the_earlier_revision_without_meta(tmp_path: Path) -> None:
    record = {**stats_record(7, [[10, 1, 5, 2], [2, 8, 1, 3]], [[0, 1, 2, 3]] * 2),
              "num_ranks": 2, "num_layers": 2, "model": "x"}  # fmt: skip
    path = tmp_path / "stats.jsonl"
    path.write_text(json.dumps(record) + "\n")
    stats = read_stats(path, "vllm")
    assert stats.load.tolist() == [[10, 1, 5, 2], [2, 8, 1, 3]] and stats.model == "x"


def test_vllm_safetensors_picks_the_model_whose_shape_fits(tmp_path: Path) -> None:
    path = tmp_path / "two.safetensors"
    save_file({"main": torch.ones(32, 8), "main-mtp": torch.ones(1, 8)}, str(path))
    with pytest.raises(InvalidInputError, match="pick one with --model-key"):
        read_stats(path)
    fitted = read_stats(path, options=ReadOptions(LayerRequest.from_flags("mixtral-8x7b")))
    assert fitted.model == "main" and fitted.num_layers == 32
    picked = read_stats(path, options=ReadOptions(model_key="main-mtp"))
    assert picked.model == "main-mtp" and picked.num_layers == 1


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
        ('{"windows": [[[0, 0]]]}', "json", "no tokens were counted"),
    ],
)
def test_bad_stats_are_rejected_with_a_reason(
    tmp_path: Path, content: str, fmt: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_stats(path, fmt)  # type: ignore[arg-type]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        read_stats(tmp_path / "nope.json")


def test_fold_slots_adds_replicas_and_ignores_unused_slots() -> None:
    slot_load = np.array([[[1.0, 2.0, 3.0, 0.0]]])  # [T=1, L=1, P=4]
    phy2log = np.array([[1, 0, 1, -1]])
    assert fold_slots(slot_load, phy2log, 2).tolist() == [[[2.0, 4.0]]]
    with pytest.raises(InvalidInputError, match="unused slot"):
        fold_slots(np.array([[[1.0, 2.0, 3.0, 1.0]]]), phy2log, 2)


def test_step_window_and_long_recordings_are_grouped() -> None:
    assert 5 in StepWindow.parse("5:6") and 6 not in StepWindow.parse("5:6")
    assert 0 in StepWindow.parse(":1") and 10**9 in StepWindow.parse("3:")
    for bad in ("5", "a:b", "6:5"):
        with pytest.raises(InvalidInputError):
            StepWindow.parse(bad)
    accumulator = WindowAccumulator()
    for step in range(3 * MAX_WINDOWS):
        accumulator.add(step, np.ones((1, 2)))
    windows, steps = accumulator.result()
    assert len(windows) < MAX_WINDOWS and windows.sum() == 3 * MAX_WINDOWS * 2
    assert steps[0] == 0 and list(steps) == sorted(steps)


@pytest.mark.parametrize(
    ("file_ids", "hidden", "flags", "expected", "assumed"),
    [
        (None, None, {}, ([0, 1, 2], None), True),
        (None, None, {"model": "mixtral-8x7b"}, None, False),  # 3 rows, not 32
        (None, None, {"first_moe_layer": 3}, ([3, 4, 5], 6), False),
        (None, None, {"num_layers": 5, "first_moe_layer": 2}, ([2, 3, 4], 5), False),
        (None, 3, {}, ([0, 1, 2], 3), False),
        ([3, 4, 5], None, {}, ([3, 4, 5], None), False),
        ([3, 4, 5], None, {"first_moe_layer": 2}, None, False),
        ([3, 4, 5], None, {"num_layers": 5}, None, False),  # layer 5 of 5 hidden layers
    ],
)
def test_layer_ids_come_from_the_file_or_the_flags_and_must_agree(
    file_ids: list[int] | None,
    hidden: int | None,
    flags: dict[str, object],
    expected: tuple[list[int], int | None] | None,
    assumed: bool,
) -> None:
    windows = np.ones((1, 3, 4))
    request = LayerRequest.from_flags(**flags)  # type: ignore[arg-type]
    if expected is None:
        with pytest.raises(InvalidInputError):
            resolve_layers(windows, file_ids, hidden, False, request)
        return
    _, layers = resolve_layers(windows, file_ids, hidden, False, request)
    assert (layers.layer_ids, layers.hidden_layers) == expected
    assert layers.assumed == assumed


def test_rows_of_every_hidden_layer_keep_the_moe_ones() -> None:
    windows = np.zeros((2, 5, 4))
    windows[:, 2:] = 1  # SGLang: dense layers 0 and 1 never count
    rows, layers = resolve_layers(windows, None, 5, True, LayerRequest())
    assert layers.layer_ids == [2, 3, 4] and layers.hidden_layers == 5 and rows.shape == (2, 3, 4)
    _, layers = resolve_layers(windows, None, 5, True, LayerRequest.from_flags(first_moe_layer=1))
    assert layers.layer_ids == [1, 2, 3, 4]  # layer 1 is MoE even if it counted nothing
    with pytest.raises(InvalidInputError, match="layer 2 counted tokens"):
        resolve_layers(windows, None, 5, True, LayerRequest.from_flags(first_moe_layer=3))


@pytest.mark.parametrize("fmt", ["expertplacement", "sglang", "trtllm"])
def test_mappings_round_trip_and_are_byte_stable(tmp_path: Path, fmt: str) -> None:
    topology = Topology(16, 4, 5)
    phy2log = rebalance(WINDOWS.sum(0), topology)
    doc = PlacementDocument(phy2log, [3, 4, 5, 6], "m", 16, 4, 5, 1, 1, hidden_layers=7)
    text = render(doc, fmt, "demo")  # type: ignore[arg-type]
    assert render(doc, fmt, "demo") == text  # type: ignore[arg-type]
    path = tmp_path / f"out.{fmt}"
    path.write_text(text)
    back = read_placement(path)
    assert np.array_equal(back.rows_for([3, 4, 5, 6], "it"), phy2log)
    if fmt == "sglang":  # one row per hidden layer; dense layers start-up
        assert back.phy2log.shape == (7, 20) and back.phy2log[0].tolist() == [
            p % 16 for p in range(20)
        ]
    else:
        assert back.layer_ids == [3, 4, 5, 6]
        with pytest.raises(InvalidInputError, match="lacks layers 2"):
            back.rows_for([2, 3, 4, 5, 6], "it")


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
    assert "layerIds" not in placement["spec"]["model"]  # the default 0..3
    # One layer per line in the mapping, so Git diffs name the layers that changed.
    mapping = config_map["data"]["placement.json"]
    assert len([line for line in mapping.splitlines() if line.startswith("  [")]) == 4


def test_previous_passes_unused_slots_on_unchanged() -> None:
    from eplb_core.formats.loadstats import LoadStats
    from eplb_operator.cli.plan import _previous_rows

    rows = [[0, 1, 2, 3, -1, -1], [3, 2, 1, 0, 0, -1]]
    doc = parse_placement(json.dumps({"physical_to_logical_map": rows}), "previous.json")
    stats = LoadStats(np.ones((1, 2, 4)), [0, 1], None, "json")
    previous = _previous_rows(doc, stats, Topology(4, 2, 3), [0, 1])
    assert previous.tolist() == rows


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "not a placement"),
        ('{"physical_to_logical_map": [[0, 1], [2]]}', "not a regular"),
        ('{"physical_to_logical_map": [[0.5, 1]]}', "integer ids"),
        ('{"physical_to_logical_map": [[true, 1]]}', "true/false"),
        ('{"physical_to_logical_map": [[1e30, 1]]}', "integer ids"),
        ("initial_global_assignments: []\n", "must map layer"),
        ("initial_global_assignments: {x: [1]}\n", "is not a layer id"),
        ("moe_config: {load_balancer: lb.yaml}\n", "points to lb.yaml: pass that file"),
        ('{"schema": "eplb.io/placement-v1", "phy2log": [[0]], "layerIds": [1, 1]}', "repeats"),
        (": : :", "neither JSON nor YAML"),
    ],
)
def test_bad_placements_are_rejected(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_placement(path)
