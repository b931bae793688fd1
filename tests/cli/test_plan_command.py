"""``eplb plan`` run as users run it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from eplb_operator.formats.mappings import read_placement
from tests.console import eplb

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "stats" / "deepseek-v3-synthetic.json"
# The example stats name no layers (as vLLM's): the preset says they are layers 3..60 of 61.
DSV3_FLAGS = ["--model", "deepseek-v3", "--ranks", "32", "--redundant", "32", "--nodes", "4",
              "--groups", "8"]  # fmt: skip


def plan_json(*args: str | Path) -> dict:  # type: ignore[type-arg]
    result = eplb("plan", *args, "--summary-json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_plan_writes_a_gitops_manifest_and_a_summary(tmp_path: Path) -> None:
    output = tmp_path / "dsv3.yaml"
    summary = plan_json("--stats", EXAMPLE, *DSV3_FLAGS, "--output", output)
    for key in ("imbalance_before", "imbalance_after", "moves", "compute_seconds", "layers"):
        assert key in summary
    assert summary["imbalance_after"] < summary["imbalance_before"]
    assert len(summary["layers"]) == 58
    assert {"layer", "imbalance_before", "imbalance_after", "moves"} <= summary["layers"][0].keys()
    config_map, placement = yaml.safe_load_all(output.read_text())
    assert placement["kind"] == "ExpertPlacement" and config_map["kind"] == "ConfigMap"
    assert placement["spec"]["model"]["name"] == "deepseek-ai/DeepSeek-V3"
    doc = read_placement(output)
    assert doc.phy2log.shape == (58, 288)
    # Hierarchical (auto with 8 groups on 4 nodes): every group on one node.
    node = torch.arange(288) // 72
    for row in doc.phy2log:
        for group in range(8):
            assert node[row // 32 == group].unique().numel() == 1


def test_rerun_on_the_same_stats_changes_no_byte(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    plan_json("--stats", EXAMPLE, *DSV3_FLAGS, "--output", first, "--name", "dsv3")
    plan_json("--stats", EXAMPLE, *DSV3_FLAGS, "--output", second, "--name", "dsv3")
    assert first.read_bytes() == second.read_bytes()


def test_engine_formats_are_indexed_by_the_engine_layer_ids(tmp_path: Path) -> None:
    sglang, trtllm = tmp_path / "map.json", tmp_path / "lb.yaml"
    plan_json("--stats", EXAMPLE, *DSV3_FLAGS, "--output", sglang, "--output-format", "sglang")
    plan_json("--stats", EXAMPLE, *DSV3_FLAGS, "--output", trtllm, "--output-format", "trtllm")
    table = json.loads(sglang.read_text())["physical_to_logical_map"]
    assert len(table) == 61 and {len(row) for row in table} == {288}
    assert table[0] == table[2] == [p % 256 for p in range(288)]  # dense: start-up placement
    balancer = yaml.safe_load(trtllm.read_text())
    assert balancer["num_slots"] == 288 and balancer["layer_updates_per_iter"] == 0
    assignments = balancer["initial_global_assignments"]
    assert sorted(assignments) == list(range(3, 61))
    assert all(assignments[layer] == table[layer] for layer in range(3, 61))


def test_engine_formats_need_to_know_the_layers(tmp_path: Path) -> None:
    output = tmp_path / "map.json"
    result = eplb("plan", "--stats", EXAMPLE, *DSV3_FLAGS[2:], "--output", output,
                  "--output-format", "sglang")  # fmt: skip
    assert result.returncode == 2 and "give --model" in result.stderr
    assert not output.exists()


def test_previous_keeps_what_can_stay_and_respects_the_budget(
    tmp_path: Path, shared_traces: list[Path]
) -> None:
    trace = next(p for p in shared_traces if "qwen2" in p.name)
    flags = ["--stats", trace, "--ranks", "8", "--redundant", "8"]
    first = tmp_path / "first.yaml"
    plan_json(*flags, "--output", first)
    again = plan_json(*flags, "--previous", first, "--output", tmp_path / "again.yaml")
    assert again["moves"] == 0
    # Against an identity placement in SGLang's format, with a budget of 10 slots.
    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps({"physical_to_logical_map": [[p % 64 for p in range(72)]] * 28}))
    budget = ["--previous", identity, "--max-moves", "10", "--output", tmp_path / "budget.yaml"]
    budgeted = plan_json(*flags, *budget)
    assert 0 < budgeted["moves"] <= 10
    assert budgeted["imbalance_after"] < budgeted["imbalance_before"]


def test_plot_writes_a_heatmap_png(tmp_path: Path) -> None:
    picture = tmp_path / "plan.png"
    plan_json("--stats", EXAMPLE, *DSV3_FLAGS, "--output", tmp_path / "p.yaml", "--plot", picture)
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_readable_table_without_summary_json(tmp_path: Path) -> None:
    result = eplb("plan", "--stats", EXAMPLE, *DSV3_FLAGS, "--output", tmp_path / "x.yaml")
    assert result.returncode == 0, result.stderr
    assert "imbalance" in result.stdout and "mean" in result.stdout


def write(path: Path, content: object) -> Path:
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("p-not-multiple", "must be a multiple of ranks"),
        ("negative-counts", "negative count"),
        ("unreadable", "no such file"),
        ("both-slot-flags", "exactly one of --redundant and --slots-per-rank"),
        (
            "other-model",
            "stats are of model 'deepseek-ai/DeepSeek-V3' "
            "but --previous was planned for 'other/model'",
        ),
        ("other-shape", "previous placement has 128 experts, not 256"),
        ("lost-expert", "has no replica"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, case: str, message: str
) -> None:
    output = tmp_path / "out.yaml"
    stats: Path = EXAMPLE
    flags = list(DSV3_FLAGS)
    extra: list[str | Path] = []
    if case == "p-not-multiple":
        flags[5] = "30"  # --redundant
    elif case == "negative-counts":
        stats = write(tmp_path / "neg.json", {"windows": [[[5, -1, 3, 2]]]})
        flags = ["--ranks", "2", "--redundant", "0"]
    elif case == "unreadable":
        stats = tmp_path / "missing.json"
    elif case == "both-slot-flags":
        flags += ["--slots-per-rank", "9"]
    else:
        previous = tmp_path / "previous.yaml"
        plan_json("--stats", EXAMPLE, *DSV3_FLAGS, "--output", previous)
        text = previous.read_text()
        if case == "other-model":
            text = text.replace("deepseek-ai/DeepSeek-V3", "other/model")
        elif case == "other-shape":
            text = text.replace('"experts": 256', '"experts": 128')
        elif case == "lost-expert":
            mapping = json.loads(yaml.safe_load_all(text).__next__()["data"]["placement.json"])
            mapping["phy2log"][5] = [0] * 288
            dense = [[p % 256 for p in range(288)]] * 3  # SGLang's map covers layers 0..60
            sglang = write(
                tmp_path / "lost.json", {"physical_to_logical_map": dense + mapping["phy2log"]}
            )
            previous = sglang
        if case != "lost-expert":
            previous.write_text(text)
        extra = ["--previous", previous]
    result = eplb("plan", "--stats", stats, *flags, *extra, "--output", output)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not output.exists()
