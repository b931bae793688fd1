"""A stand-in for TensorRT-LLM (``trtllm-serve``) with expert parallelism: one rank a pod
under mpirun (``OMPI_COMM_WORLD_RANK``), else every rank of ``--ep_size`` in this pod.

Start-up: ``--extra_llm_api_options`` YAML; its ``moe_config.load_balancer`` (a file name,
or the mapping inline) is the ``MoeLoadBalancerConfig`` (``num_slots``,
``initial_global_assignments: {layer id: [P]}``, read with ``eplb_core.formats.trtllm``);
assignments that do not fit the model stop it.  Without a balancer every expert has one
slot (slot e holds expert e).

Statistics (``tensorrt_llm/_torch/expert_statistic.py``): with
``EXPERT_STATISTIC_ITER_RANGE=A-B`` each rank counts, for iterations A..B-1, what its own
tokens (attention data parallel: token t is rank t mod R's) selected — slots with the
balancer, experts without — and at iteration B writes ``rank<r>.safetensors``
(``"<iteration>_<layer id>"`` → int64 counts) into ``EXPERT_STATISTIC_PATH``
(default ``expert_statistic``); rank 0 also writes ``meta_info.json`` (``num_experts``: the
count's width, ``num_experts_per_token``).  Once per process.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from eplb_core.formats.document import PlacementDocument
from eplb_core.formats.trtllm import parse_balancer
from eplb_core.placements import placement_error
from eplb_local.standin.model import StandinModel, add_model_flags, model_from
from eplb_local.standin.routing import StepLoad, TokenRouter
from eplb_local.standin.serving import fail, serve


def parser() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(prog="trtllm-serve stand-in")
    flags.add_argument("model")
    flags.add_argument("--host", default="127.0.0.1")
    flags.add_argument("--port", type=int, default=8000)
    flags.add_argument("--ep_size", type=int, required=True)
    flags.add_argument("--tp_size", type=int, default=None)
    flags.add_argument("--extra_llm_api_options", default=None)
    add_model_flags(flags)
    return flags


def load_balancer(options_file: str | None) -> PlacementDocument | None:
    """The MoeLoadBalancerConfig the LLM API options name, or None."""
    if options_file is None:
        return None
    try:
        options = yaml.safe_load(Path(options_file).read_text()) or {}
        moe_config = options.get("moe_config") or {}
        balancer: Any = moe_config.get("load_balancer")
        if balancer is None:
            return None
        if isinstance(balancer, str):
            balancer = yaml.safe_load(Path(balancer).read_text())
        if not isinstance(balancer, dict):
            raise ValueError("moe_config.load_balancer is neither a file nor a mapping")
        return parse_balancer(balancer)
    except (OSError, ValueError, AttributeError, yaml.YAMLError) as error:
        fail("trtllm", f"--extra_llm_api_options {options_file}: {error}")


def placement_of(balancer: PlacementDocument | None, model: StandinModel) -> np.ndarray:
    """``[L, P]`` of the MoE layers, checked against the model."""
    layers = model.moe_layer_ids
    if balancer is None:
        return np.tile(np.arange(model.experts), (len(layers), 1))
    if balancer.layer_ids != layers:
        fail("trtllm", f"initial_global_assignments has layers {balancer.layer_ids}, the model's "
                       f"MoE layers are {layers}")  # fmt: skip
    problem = placement_error(balancer.phy2log, model.slots, model.experts, layers)
    if problem is not None:
        fail("trtllm", f"initial_global_assignments: {problem}")
    return balancer.phy2log


class ExpertStatistic:
    """What ``EXPERT_STATISTIC_ITER_RANGE``/``EXPERT_STATISTIC_PATH`` make a rank write."""

    def __init__(self, model: StandinModel, rank: int, per_slot: bool, span: str) -> None:
        try:
            start, stop = (int(part) for part in span.strip().split("-"))
        except ValueError:
            fail("trtllm", f"EXPERT_STATISTIC_ITER_RANGE {span!r} is not A-B")
        self.model, self.rank, self.per_slot = model, rank, per_slot
        self.start, self.stop = start, stop
        self.path = Path(os.environ.get("EXPERT_STATISTIC_PATH", "expert_statistic"))
        self.records: dict[str, torch.Tensor] = {}

    @property
    def width(self) -> int:
        return self.model.slots if self.per_slot else self.model.experts

    def on_step(self, iteration: int, load: StepLoad) -> None:
        if iteration == self.stop:
            self.save()
        if not self.start <= iteration < self.stop:
            return
        mine = slice(self.rank, None, self.model.ranks)  # this rank's tokens
        counts = (
            load.physical(self.width, mine) if self.per_slot else load.logical(self.width, mine)
        )
        for layer_id, row in zip(self.model.moe_layer_ids, counts, strict=True):
            self.records[f"{iteration}_{layer_id}"] = torch.from_numpy(row.astype(np.int64))

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            meta = {"num_experts": self.width, "num_experts_per_token": self.model.top_k}
            (self.path / "meta_info.json").write_text(json.dumps(meta))
        save_file(self.records, str(self.path / f"rank{self.rank}.safetensors"))


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    balancer = load_balancer(args.extra_llm_api_options)
    experts = args.standin_experts
    redundant = balancer.phy2log.shape[1] - experts if balancer is not None else 0
    model = model_from(args, args.ep_size, redundant)
    problem = model.check()
    if problem is not None:
        fail("trtllm", problem)
    placement = placement_of(balancer, model)
    # Under mpirun each process is one rank; launched alone, trtllm-serve spawns every rank
    # of --ep_size on this node.
    mpi_rank = os.environ.get("OMPI_COMM_WORLD_RANK")
    ranks = [int(mpi_rank)] if mpi_rank else list(range(model.ranks))
    span = os.environ.get("EXPERT_STATISTIC_ITER_RANGE")
    per_slot = balancer is not None
    statistics = [ExpertStatistic(model, r, per_slot, span) for r in ranks] if span else []

    def on_step(iteration: int, load: StepLoad) -> None:
        for statistic in statistics:
            statistic.on_step(iteration, load)

    serve([], args.host, args.port, model, TokenRouter(model, placement), on_step)
