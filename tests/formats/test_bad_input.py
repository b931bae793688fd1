"""Every bad input to ``eplb plan``: one line on stderr, exit 2, no file written, never a
traceback; and no malformed stats file makes a reader fail any other way."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from eplb_core.errors import InvalidInputError
from eplb_core.formats.stats import read_stats
from tests.formats.conftest import assert_rejected, run_plan
from tests.formats.engines import (
    SHAPES,
    Routing,
    route,
    sglang_dump,
    trtllm_statistics,
    vllm_jsonl,
)

MIXTRAL = SHAPES["mixtral-8x7b"]
FLAGS = ["--ranks", "4", "--redundant", "4"]


@pytest.fixture(scope="module")
def routing() -> Routing:
    return route(MIXTRAL, steps=2, tokens=16, seed=4)


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def jsonl(path: Path, *records: object) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


META = {
    "record_type": "eplb_load_meta", "version": 1, "model": "m", "num_ranks": 2,
    "num_groups": 1, "num_nodes": 1, "num_layers": 1, "num_redundant_experts": 0,
}  # fmt: skip


def stats_record(load: object, p2l: object, step: int = 1) -> dict[str, object]:
    return {"record_type": "eplb_load_stats", "version": 1, "step": step,
            "expert_load": load, "p2l_map": p2l}  # fmt: skip


def corrupt_safetensors(d: Path) -> Path:
    path = d / "load.safetensors"
    save_file({"m": torch.ones(2, 8)}, str(path))
    path.write_bytes(path.read_bytes()[:-7])
    return path


def foreign_pickle(d: Path) -> Path:
    path = d / "dump.pt"
    path.write_bytes(pickle.dumps(Path("/etc")))  # a pickle, but not tensors
    return path


def torch_list(d: Path) -> Path:
    path = d / "dump.pt"
    torch.save([torch.ones(2)], path)
    return path


def truncated_jsonl(d: Path, routing: Routing) -> Path:
    path = vllm_jsonl(routing, d / "stats.jsonl")
    path.write_text(path.read_text()[:-40])
    return path


def truncated_json(d: Path) -> Path:
    path = d / "stats.json"
    path.write_text('{"windows": [[[1, 2, 3, 4, 5, 6, 7, 8]')
    return path


def trtllm_wrong_width(d: Path, routing: Routing) -> Path:
    path = trtllm_statistics(routing, d / "stats")
    (path / "meta_info.json").write_text(json.dumps({"num_experts": 9}))
    return path


def header_only_safetensors(d: Path) -> Path:
    path = d / "x.safetensors"
    header = b'{"m": {"dtype": "F32", "shape": [2, 8], "data_offsets": [0, 64]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    return path


Builder = Callable[[Path, Routing], Path]
MIXTRAL_ROW = [*range(8), 0, 1, 2, 3]  # 8 experts on 12 slots


def json_file(document: object) -> Builder:
    return lambda d, r: write_json(d / "s.json", document)


def jsonl_file(*records: object) -> Builder:
    return lambda d, r: jsonl(d / "s.jsonl", *records)


def tensors_file(**tensors: torch.Tensor) -> Builder:
    def build(d: Path, r: Routing) -> Path:
        save_file(tensors, str(d / "l.safetensors"))
        return d / "l.safetensors"

    return build


def nan_json(d: Path, r: Routing) -> Path:
    (d / "s.json").write_text('{"windows": [[[1, NaN]]]}')
    return d / "s.json"


def per_slot_trtllm(d: Path, r: Routing) -> Path:
    return trtllm_statistics(r, d / "stats", balancer=dict.fromkeys(range(32), MIXTRAL_ROW))


def jsonl_of(d: Path, r: Routing) -> Path:
    return vllm_jsonl(r, d / "s.jsonl")


ONE_LAYER = [[1, 2]], [[0, 1]]
CASES: dict[str, tuple[Builder, list[str], str]] = {
    "corrupt safetensors": (lambda d, r: corrupt_safetensors(d), [], "not a readable safetensors"),
    "safetensors short of data": (lambda d, r: header_only_safetensors(d), [], "safetensors"),
    "pickle that is not a tensor": (
        lambda d, r: foreign_pickle(d), [], "not a torch file SGLang wrote",
    ),
    "torch file of a list": (lambda d, r: torch_list(d), [], "holds a list"),
    "truncated JSONL": (truncated_jsonl, [], "is not JSON"),
    "truncated JSON": (lambda d, r: truncated_json(d), [], "not a stats file this tool knows"),
    "expert_load and p2l_map shapes differ": (
        jsonl_file(META, stats_record([[1, 2]], [[0, 1, 1]])),
        [], "line 2: expert_load [1, 2] and p2l_map [1, 3]",
    ),
    "stats before meta": (
        jsonl_file(stats_record(*ONE_LAYER), META), [], "line 1: eplb_load_stats before",
    ),
    "second meta": (jsonl_file(META, META), [], "line 2: a second eplb_load_meta"),
    "unknown record type": (
        jsonl_file(META, {"record_type": "bench_run_start"}),
        [], "unexpected record_type 'bench_run_start'",
    ),
    "meta without stats": (jsonl_file(META), [], "no eplb_load_stats"),
    "meta of another layer count": (
        jsonl_file({**META, "num_layers": 2}, stats_record(*ONE_LAYER)),
        [], "expert_load has 1 layers, num_layers says 2",
    ),
    "p2l naming an unknown expert": (
        jsonl_file(META, stats_record([[1, 2]], [[0, 5]])), [], "names expert 5",
    ),
    "NaN count": (nan_json, [], "NaN or infinity at window 0, layer 0, expert 1"),
    "infinite count in safetensors": (
        tensors_file(m=torch.tensor([[1.0, float("inf")]])), [], "NaN or infinity",
    ),
    "negative count": (
        jsonl_file(META, stats_record([[1, -2]], [[0, 1]])),
        [], "negative count at layer 0, slot 1",
    ),
    "huge count": (json_file({"windows": [[[2**53 + 2, 1]]]}), [], "above 2**53"),
    "count beyond int64": (json_file({"windows": [[[10**30, 1]]]}), [], "must hold numbers"),
    "true/false counts": (json_file({"logical_count": [[True, False]]}), [], "true/false"),
    "wrong dimensions": (json_file({"logical_count": [1, 2]}), [], "got 1 dimensions"),
    "TensorRT-LLM counts wider than meta_info": (trtllm_wrong_width, [], "meta_info says 9"),
    "duplicate layer ids": (
        json_file({"windows": [[[1, 2], [3, 4]]], "layer_ids": [3, 3]}),
        [], "layer_ids repeats layer 3",
    ),
    "layer ids out of order": (
        json_file({"windows": [[[1, 2], [3, 4]]], "layer_ids": [4, 3]}), [], "out of order",
    ),
    "layer id beyond the hidden layers": (
        json_file({"windows": [[[1, 2]]], "layer_ids": [5], "hidden_layers": 4}),
        [], "covers layer 5, but the model has 4 hidden layers",
    ),
    "preset of another model": (
        lambda d, r: trtllm_statistics(r, d / "stats"), ["--model", "deepseek-v3"],
        "covers layers 0..31, but --model deepseek-v3 means MoE layers 3..60",
    ),
    "preset with another layer count": (
        jsonl_of, ["--model", "qwen3-30b-a3b"],
        "it has 32 MoE layers, but --model qwen3-30b-a3b means 48",
    ),
    "flag contradicting the preset": (
        jsonl_of, ["--model", "mixtral-8x7b", "--num-layers", "30"],
        "--num-layers 30 contradicts --model mixtral-8x7b (32)",
    ),
    "unknown preset": (jsonl_of, ["--model", "gpt-5"], "not a preset"),
    "dense layer that counted tokens": (
        lambda d, r: sglang_dump(r, d), ["--first-moe-layer", "3"],
        "layer 0 counted tokens, but --first-moe-layer 3 makes it a dense layer",
    ),
    "SGLang output on unknown layer ids": (
        jsonl_of, ["--output-format", "sglang"],
        "SGLang indexes its file by layer id: give --model",
    ),
    "steps selecting nothing": (
        jsonl_of, ["--steps", "5:7"], "no step in --steps 5:7 (the file has steps 100..101)",
    ),
    "malformed steps": (jsonl_of, ["--steps", "a-b"], "is not A:B"),
    "per-slot counts without the placement in force": (
        per_slot_trtllm, ["--model", "mixtral-8x7b"],
        "pass its YAML that was in force while recording as --previous",
    ),
    "model key not in the file": (
        tensors_file(a=torch.ones(2, 8)), ["--model-key", "b"], "--model-key 'b' is not in it",
    ),
    "two models, none picked": (
        tensors_file(a=torch.ones(2, 8), b=torch.ones(1, 8)),
        [], "it holds 2 models ('a' [2, 8], 'b' [1, 8]): pick one with --model-key",
    ),
    "a placement given as stats": (
        json_file({"physical_to_logical_map": [[0, 1]]}), [], "use --previous",
    ),
    "more experts than the API allows": (
        json_file({"windows": [[[1] * 8193]]}), ["--ranks", "1", "--redundant", "0"],
        "experts: Input should be less than or equal to 8192",
    ),
    "more layers than the API allows": (
        json_file({"windows": [[[1, 1]] * 1025]}), ["--ranks", "1", "--redundant", "0"],
        "layers: Input should be less than or equal to 1024",
    ),
    "more ranks than the API allows": (
        json_file({"windows": [[[1] * 8]]}), ["--ranks", "16392", "--redundant", "16384"],
        "ranks: Input should be less than or equal to 16384",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, routing: Routing, tmp_path: Path
) -> None:
    build, extra, message = CASES[case]
    stats = build(tmp_path, routing)
    flags = [] if "--ranks" in extra else FLAGS
    output = tmp_path / "out" / "placement.yaml"
    output.parent.mkdir()
    assert_rejected(run_plan("--stats", stats, *flags, *extra, "--output", output), message, output)


@pytest.mark.parametrize("where", ["missing directory", "a directory", "plot onto a directory"])
def test_unwritable_output_exits_2_and_leaves_nothing(
    where: str, routing: Routing, tmp_path: Path
) -> None:
    stats = vllm_jsonl(routing, tmp_path / "s.jsonl")
    output = tmp_path / "placement.yaml"
    extra: list[str | Path] = []
    if where == "missing directory":
        output = tmp_path / "nowhere" / "placement.yaml"
    elif where == "a directory":
        output.mkdir()
    else:
        (tmp_path / "plan.png").mkdir()
        extra = ["--plot", tmp_path / "plan.png"]
    result = run_plan("--stats", stats, *FLAGS, "--output", output, *extra)
    if where == "a directory":
        assert result.exit_code == 2 and "cannot write" in result.stderr
        assert list(output.iterdir()) == [] and len(list(tmp_path.glob(".placement*"))) == 0
    else:
        assert_rejected(result, "cannot write", output)


def test_bad_previous_placements(routing: Routing, tmp_path: Path) -> None:
    stats = trtllm_statistics(routing, tmp_path / "stats")
    output = tmp_path / "out.yaml"
    cases = {
        "keys 0..30": (
            {"num_slots": 12, "initial_global_assignments": dict.fromkeys(range(31), MIXTRAL_ROW)},
            "--previous covers layers 0..30, the stats 0..31: it lacks layers 31",
        ),
        "extra key": (
            {"num_slots": 12, "initial_global_assignments": {0: [0]}, "policy": "x"},
            "MoeLoadBalancerConfig takes only",
        ),
        "ids below -1": ({"physical_to_logical_map": [[-2] * 12] * 32}, "below -1"),
        "SGLang map with extra key": (
            {"physical_to_logical_map": [[0] * 12] * 32, "logical_count": []}, "takes only",
        ),
        "SGLang map too short": (
            {"physical_to_logical_map": [MIXTRAL_ROW] * 30},
            "has 30 rows, one per hidden layer, but the stats name layer 30",
        ),
        "mapping JSON broken": (
            {"kind": "ConfigMap", "data": {"placement.json": "{"}}, "placement.json is not JSON",
        ),
    }  # fmt: skip
    for name, (document, message) in cases.items():
        previous = write_json(tmp_path / f"{name}.json", document)
        result = run_plan("--stats", stats, *FLAGS, "--previous", previous, "--output", output)
        assert_rejected(result, message, output)


# -- no malformed file makes a reader fail other than with InvalidInputError -------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**64)
    | st.floats()
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["windows", "logical_count", "record_type", "expert_load", "p2l_map",
                         "step", "layer_ids", "num_layers", "hidden_layers", "version"]),
        children,
        max_size=5,
    ),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(document=json_values, as_jsonl=st.booleans())
def test_arbitrary_json_never_crashes_a_reader(
    document: object, as_jsonl: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("h") / "stats.json"
    if as_jsonl:
        path.write_text(json.dumps(META) + "\n" + json.dumps(document) + "\n")
    else:
        path.write_text(json.dumps(document))
    try:
        read_stats(path)
    except InvalidInputError as error:
        assert "\n" not in str(error).strip()


@pytest.fixture(scope="module")
def valid_files(routing: Routing, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    directory = tmp_path_factory.mktemp("valid")
    jsonl_path = vllm_jsonl(routing, directory / "s.jsonl")
    dump = sglang_dump(routing, directory)
    tensors = directory / "l.safetensors"
    save_file({"m": torch.from_numpy(routing.true_load()).float()}, str(tensors))
    return [p.read_bytes() for p in (jsonl_path, dump, tensors)]


@settings(max_examples=150, deadline=None)
@given(
    which=st.integers(0, 2),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
)
def test_damaged_engine_files_never_crash_a_reader(
    valid_files: list[bytes],
    which: int,
    cut: float,
    flips: list[tuple[float, int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = bytearray(valid_files[which])
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = data[: max(1, int(cut * len(data)))] if cut < 0.98 else data
    path = tmp_path_factory.mktemp("d") / "stats"
    path.write_bytes(bytes(data))
    try:
        stats = read_stats(path)
    except InvalidInputError:
        return
    assert np.isfinite(stats.windows).all() and (stats.windows >= 0).all()
