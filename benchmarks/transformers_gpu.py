"""Hot swap under real model code on one GPU: invariance, engine stall per layer, tokens/s.

    python benchmarks/transformers_gpu.py            # on a machine with one GPU
    python benchmarks/transformers_gpu.py --smoke    # CPU, tiny models: the script's CPU path

Per architecture (Hugging Face transformers' Mixtral, Qwen3-MoE and DeepSeek-V3 model code,
through :mod:`eplb_sidecar.adapters.transformers`): one engine process on the GPU, its tiny
configuration scaled up to a few GB of bf16 experts in its table's slots (CUDA IPC), and one
sidecar process.  The engine serves prefill batches back to back; the benchmark reads its
token counter in three windows: before, while rollouts change every slot of every layer
(one layer per prepare/commit round, as the operator with ``layersPerStep: 1``, back and
forth between two placements), and after.  Also: the engine's stall per committed layer (the
sidecar's ``stall_seconds``: how long the commit held the engine at its step boundary),
prepare time per layer, the logits of a fixed prompt before and after (bit-identical
expected) and every slot's weights at the end.  Results go to
benchmarks/results/transformers-gpu.md (``--smoke``: benchmarks/.cache/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import machine, table
from eplb_local.engine.verify import slot_weight_errors
from eplb_local.launch import LocalGroup
from eplb_sidecar.adapters.transformers.options import Architecture, TransformersOptions
from eplb_sidecar.api import CommitRequest, PrepareRequest
from eplb_sidecar.client import SidecarClient
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.engine.config import EngineConfig, Workload
from eplb_sidecar.engine.startup import identity_placement

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE_RESULTS = Path(__file__).resolve().parent / ".cache"
ARCHITECTURES: list[Architecture] = ["mixtral", "qwen3-moe", "deepseek-v3"]


def gpu_config(architecture: Architecture) -> EngineConfig:
    """One rank holding every slot; about 4-6 GB of bf16 experts."""
    shapes: dict[str, dict[str, int]] = {
        # Mixtral: 8 large experts, top-2; 2 redundant slots.
        "mixtral": dict(layers=8, experts=8, slots_per_rank=10, hidden=2048, intermediate=4096,
                        top_k=2),
        # Qwen3-MoE: 64 small experts (Qwen3-30B-A3B has 128 of I=768), top-8.
        "qwen3-moe": dict(layers=8, experts=64, slots_per_rank=80, hidden=2048,
                          intermediate=768, top_k=8),
        # DeepSeek-V3: 64 experts in 8 groups (4 chosen), top-8, a shared expert.
        "deepseek-v3": dict(layers=6, experts=64, slots_per_rank=80, hidden=2048,
                            intermediate=1024, top_k=8),
    }  # fmt: skip
    return EngineConfig(
        ranks=1, dtype="bfloat16", device="cuda:0",
        workload=Workload(tokens_per_step=4096, step_interval=0.0), **shapes[architecture],
    )  # fmt: skip


def smoke_config(architecture: Architecture) -> EngineConfig:
    top_k = 2 if architecture == "mixtral" else 4
    return EngineConfig(
        ranks=1, layers=2, experts=8, slots_per_rank=10, hidden=64, intermediate=32,
        top_k=top_k, workload=Workload(tokens_per_step=128, step_interval=0.0),
    )  # fmt: skip


def rotated(placement: torch.Tensor) -> torch.Tensor:
    """``[L, P]``: slot ``p`` takes the expert of slot ``p+1`` — every slot changes."""
    return placement.roll(-1, dims=1)


@dataclass
class Figures:
    architecture: str
    config: EngineConfig
    expert_bytes: int
    tokens_per_second: tuple[float, float, float]  # before, during swaps, after
    layers_committed: int
    moves_per_layer: int
    stall_seconds: list[float]
    prepare_seconds: list[float]
    identical: bool
    slot_errors: list[str]


def tokens_served(group: LocalGroup) -> int:
    with urllib.request.urlopen(f"{group.pods[0].engine_url}/v1/status", timeout=60) as reply:
        return int(json.load(reply)["tokens_served"])


def rate(group: LocalGroup, seconds: float) -> float:
    """Tokens per second the engine serves over the next ``seconds``."""
    first, started = tokens_served(group), time.perf_counter()
    time.sleep(seconds)
    return (tokens_served(group) - first) / (time.perf_counter() - started)


async def swap_until(
    group: LocalGroup, placements: list[torch.Tensor], seconds: float
) -> tuple[int, list[float], list[float]]:
    """Roll out ``placements`` in turn, a layer per round, for at least ``seconds`` and an
    odd number of rollouts (so the engine ends on ``placements[0]``)."""
    client = SidecarClient(group.pods[0].control_url, group.token)
    stalls: list[float] = []
    prepares: list[float] = []
    deadline = time.perf_counter() + seconds
    revision = 0
    while revision % 2 == 0 or time.perf_counter() < deadline:
        revision += 1
        target = placements[(revision - 1) % len(placements)]
        for layer in range(target.shape[0]):
            request = PrepareRequest(revision=revision, layers={layer: target[layer].tolist()})
            prepared = await client.prepare(request)
            committed = await client.commit(CommitRequest(revision=revision, layers=[layer]))
            prepares.append(prepared.seconds)
            stalls.append(committed.stall_seconds)
    await client.close()
    return revision * placements[0].shape[0], stalls, prepares


def measure(
    architecture: Architecture, config: EngineConfig, window: float, workdir: Path
) -> Figures:
    options = TransformersOptions(architecture=architecture, dispatch_block=128)
    start_up = identity_placement(config)
    target = rotated(start_up)
    group = LocalGroup(config, workdir, transformers=options).start(timeout=900)
    try:
        before_logits = group.probe(tokens=64)
        rate(group, window)  # warm-up: allocator, kernels
        before = rate(group, window)
        first, started = tokens_served(group), time.perf_counter()
        layers, stalls, prepares = asyncio.run(swap_until(group, [target, start_up], window))
        during = (tokens_served(group) - first) / (time.perf_counter() - started)
        after = rate(group, window)
        identical = torch.equal(group.probe(tokens=64), before_logits)
        view = ExpertTable.attach(group.pods[0].table_dir)
        errors = slot_weight_errors(view, config.seed)
        if not torch.equal(view.routing, target):
            errors.append("the engine does not serve the last rollout's placement")
        expert_bytes = view.layout.expert_nbytes
    finally:
        group.stop()
    return Figures(
        architecture, config, expert_bytes, (before, during, after), layers,
        int((target != start_up).sum(dim=1).max()), stalls, prepares, identical, errors,
    )  # fmt: skip


HEADER = [
    "model", "shape", "expert GiB", "tokens/s before", "during swaps", "after",
    "layers committed × moves", "stall ms (median / max)", "prepare ms (median)",
    "logits bit-identical", "every slot exact",
]  # fmt: skip


def report(figures: list[Figures], command: str) -> str:
    rows = []
    for f in figures:
        c = f.config
        total = c.layers * c.slots_per_rank * f.expert_bytes
        before, during, after = f.tokens_per_second
        rows.append([
            f.architecture,
            f"{c.layers} × {c.slots_per_rank} slots of {c.experts} experts, H {c.hidden}, "
            f"I {c.intermediate}, top-{c.top_k}",
            f"{total / 2**30:.2f}",
            f"{before:,.0f}", f"{during:,.0f} ({during / before:.0%})",
            f"{after:,.0f} ({after / before:.0%})",
            f"{f.layers_committed} × {f.moves_per_layer} slots "
            f"({f.moves_per_layer * f.expert_bytes / 2**20:,.0f} MiB)",
            f"{statistics.median(f.stall_seconds) * 1e3:.2f} / "
            f"{max(f.stall_seconds) * 1e3:.2f}",
            f"{statistics.median(f.prepare_seconds) * 1e3:.1f}",
            "**yes**" if f.identical else "**NO**",
            "yes" if not f.slot_errors else f"**NO** ({len(f.slot_errors)}: {f.slot_errors[0]})",
        ])  # fmt: skip
    device = figures[0].config.device
    return (
        "# Hot swap under Hugging Face transformers MoE models\n\n"
        f"Command: `{command.strip()}`  \nMachine: {machine()}\n\n"
        f"One engine process ({device}, {figures[0].config.dtype}; the adapter "
        "`eplb_sidecar.adapters.transformers`, dispatch blocks of 128 pairs) and its sidecar "
        "per model; prefill batches of "
        f"{figures[0].config.workload.tokens_per_step} tokens back to back. During: rollouts "
        "that change every slot of every layer, one layer per prepare/commit round, back and "
        "forth, for the whole window. Stall: how long a commit held the engine at its step "
        "boundary (median / max over all committed layers). Logits: a fixed 64-token prompt "
        "before and after, compared bit for bit.\n\n" + table(HEADER, rows) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, short windows")
    parser.add_argument("--models", nargs="+", choices=ARCHITECTURES, default=ARCHITECTURES)
    parser.add_argument("--window", type=float, help="seconds per measuring window")
    parser.add_argument("--output", type=Path, help="where the Markdown report goes")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on a GPU machine, or pass --smoke")
    window = args.window or (1.0 if args.smoke else 5.0)
    configs = smoke_config if args.smoke else gpu_config
    figures = []
    for architecture in args.models:
        with tempfile.TemporaryDirectory() as workdir:
            figures.append(measure(architecture, configs(architecture), window, Path(workdir)))
        print(f"{architecture}: done", flush=True)
    output = args.output or (SMOKE_RESULTS / "transformers-smoke.md" if args.smoke
                             else RESULTS / "transformers-gpu.md")  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/transformers_gpu.py " + shlex.join(sys.argv[1:])
    output.write_text(report(figures, command))
    print(output.read_text())
    if not all(f.identical and not f.slot_errors for f in figures):
        sys.exit(1)


if __name__ == "__main__":
    main()
