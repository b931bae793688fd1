"""A stand-in for vLLM serving with expert parallelism and EPLB (one EP rank a pod).

Start-up (``--eplb-config``'s ``read_stats_path``, vLLM PR #41141): the JSONL of load
statistics is read (``eplb_core.formats``: meta line, then records folded with their
``p2l_map``), its meta checked against this deployment (EP size, MoE layers, redundant
experts), and the placement planned from its load — where vLLM runs its EPLB policy, this
stand-in runs the project's placement engine.  Without it: slot p holds expert p mod E.

Recording (``write_stats_path``, EP rank 0, which sees the all-reduced load): the file is
opened for appending and an ``eplb_load_meta`` line written, then an ``eplb_load_stats``
record ``{"record_type", "version": 1, "step", "expert_load": [L][P], "p2l_map": [L][P]}``
for every step that routed tokens, one line each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import IO, Any

import numpy as np

from eplb_core.formats import vllm as vllm_format
from eplb_core.formats.stats import read_stats
from eplb_core.placements import start_up_placement
from eplb_local.standin.model import StandinModel, add_model_flags, model_from
from eplb_local.standin.routing import StepLoad, TokenRouter
from eplb_local.standin.serving import fail, serve
from eplb_operator.placement import Topology, rebalance

EPLB_KEYS = {
    "window_size", "step_interval", "num_redundant_experts", "log_balancedness",
    "read_stats_path", "write_stats_path",
}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(prog="vllm serve stand-in")
    flags.add_argument("model")
    flags.add_argument("--host", default="127.0.0.1")
    flags.add_argument("--port", type=int, default=8000)
    flags.add_argument("--data-parallel-size", type=int, required=True)
    flags.add_argument("--data-parallel-size-local", type=int, default=1)
    flags.add_argument("--data-parallel-start-rank", type=int, default=0)
    flags.add_argument("--headless", action="store_true")
    flags.add_argument("--enable-expert-parallel", action="store_true")
    flags.add_argument("--enable-eplb", action="store_true")
    flags.add_argument("--eplb-config", type=json.loads, default={})
    add_model_flags(flags)
    return flags


def startup_placement(config: dict[str, Any], model: StandinModel) -> np.ndarray:
    """``[L, P]`` of the MoE layers: planned from ``read_stats_path``, else p mod E."""
    layers = len(model.moe_layer_ids)
    path = config.get("read_stats_path")
    if not path:
        return start_up_placement(layers, model.slots, model.experts)
    try:
        with open(path) as file:
            meta = json.loads(file.readline())
        stats = read_stats(Path(path), "vllm")
    except (OSError, ValueError) as error:  # InvalidInputError included
        fail("vllm", f"read_stats_path {path}: {error}")
    wanted = {"num_ranks": model.ranks, "num_layers": layers,
              "num_redundant_experts": model.redundant}  # fmt: skip
    if meta.get("record_type") == vllm_format.META:
        for key, value in wanted.items():
            if meta.get(key) != value:
                fail("vllm", f"read_stats_path {path}: {key} is {meta.get(key)}, this "
                             f"deployment has {value}")  # fmt: skip
    if stats.num_experts != model.experts:
        fail("vllm", f"read_stats_path {path}: {stats.num_experts} experts, the model "
                     f"{model.experts}")  # fmt: skip
    topology = Topology(model.experts, model.ranks, model.slots_per_rank, 1, 1)
    return rebalance(stats.load, topology)


class StatsWriter:
    """vLLM's ``write_stats_path`` writer (EP rank 0)."""

    def __init__(self, path: Path, model: StandinModel, name: str, p2l: np.ndarray) -> None:
        self.model = model
        self.p2l = p2l.tolist()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[str] = path.open("a")
        meta = {
            "record_type": vllm_format.META, "version": vllm_format.VERSION, "model": name,
            "num_ranks": model.ranks, "num_groups": 1, "num_nodes": 1,
            "num_layers": len(model.moe_layer_ids), "num_redundant_experts": model.redundant,
        }  # fmt: skip
        self._write(meta)

    def on_step(self, step: int, load: StepLoad) -> None:
        expert_load = load.physical(self.model.slots)
        if not expert_load.any():
            return  # vLLM writes no record for a step without tokens
        record = {"record_type": vllm_format.STATS, "version": vllm_format.VERSION, "step": step}
        self._write(record | {"expert_load": expert_load.tolist(), "p2l_map": self.p2l})

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    config = args.eplb_config
    if not isinstance(config, dict) or set(config) - EPLB_KEYS:
        fail("vllm", f"--eplb-config takes the keys {sorted(EPLB_KEYS)}")
    if args.data_parallel_size_local != 1 or not args.enable_expert_parallel:
        fail("vllm", "the stand-in serves one EP rank a pod: --enable-expert-parallel "
                     "--data-parallel-size-local 1")  # fmt: skip
    model = model_from(args, args.data_parallel_size, int(config.get("num_redundant_experts", 0)))
    problem = model.check()
    if problem is not None:
        fail("vllm", problem)
    placement = startup_placement(config, model)
    router = TokenRouter(model, placement)
    write = config.get("write_stats_path")
    recording = args.enable_eplb and args.data_parallel_start_rank == 0
    writer = StatsWriter(Path(write), model, args.model, placement) if write and recording else None
    serve([], args.host, args.port, model, router, writer.on_step if writer else _nothing)


def _nothing(step: int, load: StepLoad) -> None:
    """A rank other than 0 writes no statistics."""
