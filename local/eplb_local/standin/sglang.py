"""A stand-in for SGLang serving with expert parallelism over nodes (one EP rank a node).

Start-up: ``--init-expert-location`` is ``trivial`` (slot p holds expert p mod E, in every
layer) or a JSON file ``{"physical_to_logical_map": [H][P]}`` with a row per hidden layer
(read with ``eplb_core.formats.sglang``); a map that does not fit stops it, as SGLang
stops on it.  (SGLang also takes ``{"logical_count": …}`` and plans from it; this stand-in
does not.)

Recorder (``--expert-distribution-recorder-mode stat``, node 0 only, as SGLang's HTTP server
runs on node 0): ``/start_expert_distribution_record`` resets and starts recording;
each step appends the group's tokens per physical slot ``[H, P]`` to a circular buffer of
``--expert-distribution-recorder-buffer-size`` steps; ``/dump_expert_distribution_record``
folds the buffer to logical experts and ``torch.save``s ``{"rank": 0, "logical_count": [T,
H, E] int32, "average_utilization_rate_over_window": None}`` as
``expert_distribution_recorder_<time.time()>.pt`` in ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``
(default /tmp), then resets the buffer.  Other nodes answer ``/health`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from aiohttp import web

from eplb_core.errors import InvalidInputError
from eplb_core.formats.sglang import MAP_KEY, parse_map
from eplb_core.placements import placement_error, start_up_placement
from eplb_local.standin.model import StandinModel, add_model_flags, model_from
from eplb_local.standin.routing import StepLoad, TokenRouter
from eplb_local.standin.serving import fail, health, serve

NOT_SET = (
    "Please set ServerArgs.expert_distribution_recorder_mode to use ExpertDistributionRecorder."
)


def parser() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(prog="sglang stand-in")
    flags.add_argument("--host", default="127.0.0.1")
    flags.add_argument("--port", type=int, default=30000)
    flags.add_argument("--ep-size", type=int, required=True)
    flags.add_argument("--nnodes", type=int, default=1)
    flags.add_argument("--node-rank", type=int, default=0)
    flags.add_argument("--ep-num-redundant-experts", type=int, default=0)
    flags.add_argument("--init-expert-location", default="trivial")
    flags.add_argument("--expert-distribution-recorder-mode", choices=["stat"], default=None)
    flags.add_argument("--expert-distribution-recorder-buffer-size", type=int, default=1000)
    add_model_flags(flags)
    return flags


def load_map(location: str, model: StandinModel) -> np.ndarray:
    """``[H, P]`` physical_to_logical_map of every hidden layer."""
    if location == "trivial":
        return start_up_placement(model.hidden_layers, model.slots, model.experts)
    try:
        document = json.loads(Path(location).read_text())
        if not isinstance(document, dict) or MAP_KEY not in document:
            raise InvalidInputError(f"{location} holds no {MAP_KEY}")
        rows = parse_map(document).phy2log
    except (OSError, ValueError) as error:
        fail("sglang", f"--init-expert-location {location}: {error}")
    if rows.shape[0] != model.hidden_layers:
        fail("sglang", f"{MAP_KEY} has {rows.shape[0]} rows, the model {model.hidden_layers} "
                       "hidden layers")  # fmt: skip
    moe = rows[model.moe_layer_ids]
    problem = placement_error(moe, model.slots, model.experts, model.moe_layer_ids)
    if problem is not None:
        fail("sglang", f"--init-expert-location {location}: {problem}")
    return rows


class Recorder:
    """SGLang's stat-mode accumulator on node 0: a circular buffer of per-step slot counts."""

    def __init__(self, model: StandinModel, phy2log: np.ndarray, buffer_size: int) -> None:
        self.model = model
        self.phy2log = phy2log  # [H, P]
        self.buffer = np.zeros((buffer_size, model.hidden_layers, model.slots), dtype=np.int32)
        self.index = 0
        self.recording = False
        self.directory = Path(os.environ.get("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", "/tmp"))

    def on_step(self, _: int, load: StepLoad) -> None:
        if not self.recording:
            return
        self.buffer[self.index] = 0
        self.buffer[self.index, self.model.moe_layer_ids] = load.physical(self.model.slots)
        self.index = (self.index + 1) % len(self.buffer)

    def start(self) -> None:
        self.reset()
        self.recording = True

    def reset(self) -> None:
        self.buffer[...] = 0

    def dump(self) -> Path:
        steps, hidden, _ = self.buffer.shape
        logical = torch.zeros(steps, hidden, self.model.experts, dtype=torch.int32)
        index = torch.from_numpy(self.phy2log).long().unsqueeze(0).expand(steps, -1, -1)
        logical.scatter_add_(2, index, torch.from_numpy(self.buffer))
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"expert_distribution_recorder_{time.time()}.pt"
        torch.save(
            {"rank": 0, "logical_count": logical, "average_utilization_rate_over_window": None},
            str(path),
        )
        self.reset()
        return path


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    model = model_from(args, args.ep_size, args.ep_num_redundant_experts)
    problem = model.check()
    if problem is not None:
        fail("sglang", problem)
    phy2log = load_map(args.init_expert_location, model)
    recorder = Recorder(model, phy2log, args.expert_distribution_recorder_buffer_size)
    routes = [web.get("/health_generate", health)]
    if args.node_rank == 0:  # SGLang's HTTP server runs on node 0; others answer health only
        routes += recorder_routes(recorder, args.expert_distribution_recorder_mode is not None)
    router = TokenRouter(model, phy2log[model.moe_layer_ids])
    serve(routes, args.host, args.port, model, router, recorder.on_step)


def recorder_routes(recorder: Recorder, enabled: bool) -> list[web.RouteDef]:
    """GET or POST ``/{start,stop,dump}_expert_distribution_record``, answered as SGLang does."""

    def stop() -> None:
        recorder.recording = False

    actions = {
        "start": (recorder.start, "Start recording the expert distribution.\n"),
        "stop": (stop, "Stop recording the expert distribution.\n"),
        "dump": (recorder.dump, "Dump expert distribution record.\n"),
    }
    routes = []
    for name, (act, answer) in actions.items():

        async def handle(_: web.Request, act: object = act, answer: str = answer) -> web.Response:
            if not enabled:
                return web.Response(status=500, text=NOT_SET)
            assert callable(act)
            act()
            return web.Response(text=answer)

        path = f"/{name}_expert_distribution_record"
        routes += [web.get(path, handle), web.post(path, handle)]
    return routes
