"""``eplb-sidecar``: the per-pod data-plane process, and the engines it serves beside."""

from __future__ import annotations

import logging
import os
import socket
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from eplb_sidecar import __version__
from eplb_sidecar.api import MAX_RANKS_PER_POD
from eplb_sidecar.checkpoint import DEFAULT_KEY_TEMPLATE

app = typer.Typer(
    name="eplb-sidecar",
    help="Per-pod EPLB sidecar: expert load exporter and weight-shuffle control API.",
    no_args_is_help=True,
    add_completion=False,
)

TableDir = Annotated[
    Path, typer.Option(help="Directory of the expert table (shared memory emptyDir).")
]


@app.callback()
def main() -> None:
    """Per-pod EPLB sidecar."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command("serve")
def serve_command(
    table_dir: Annotated[
        Path | None,
        typer.Option(help="Directory of the expert table (shared-memory emptyDir); source table."),
    ] = None,
    auth: Annotated[
        str,
        typer.Option(
            help="Who may call the control API: kubernetes (the operator's ServiceAccount "
            "token, checked with a TokenReview and a SubjectAccessReview) or token-file "
            "(--token-file; only for running without Kubernetes)."
        ),
    ] = "kubernetes",
    token_file: Annotated[
        Path | None,
        typer.Option(help="--auth token-file: the control API's bearer token."),
    ] = None,
    audience: Annotated[
        str, typer.Option(help="--auth kubernetes: the audience the caller's token must have.")
    ] = "eplb-sidecar",
    namespace: Annotated[
        str,
        typer.Option(
            envvar="POD_NAMESPACE",
            help="--auth kubernetes: the namespace the caller must be allowed to roll out "
            "placements in (default: the pod's).",
        ),
    ] = "",
    source: Annotated[
        str,
        typer.Option(
            help="Where load comes from: table (the engine contract: export and hot swap), or "
            "the engine's own output: vllm-stats, sglang, trtllm (export only)."
        ),
    ] = "table",
    stats_path: Annotated[
        Path | None,
        typer.Option(
            help="vllm-stats: the JSONL at vLLM's write_stats_path; sglang: "
            "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR; trtllm: EXPERT_STATISTIC_PATH."
        ),
    ] = None,
    engine_url: Annotated[
        str | None,
        typer.Option(help="sglang: the engine's HTTP server, e.g. http://127.0.0.1:30000."),
    ] = None,
    placement_file: Annotated[
        Path | None,
        typer.Option(help="trtllm: the load-balancer YAML the engine started from (folds slots)."),
    ] = None,
    layer_ids: Annotated[
        str | None,
        typer.Option(
            help="Engine layer ids of the MoE layers, e.g. 3-60 (vLLM counts MoE layers "
            "only; SGLang's dumps have a row per hidden layer)."
        ),
    ] = None,
    experts: Annotated[
        int | None, typer.Option(help="Logical experts per layer (checks the engine's output).")
    ] = None,
    poll_seconds: Annotated[
        float, typer.Option(help="How often a load source is read (sglang: dumped).")
    ] = 5.0,
    pod: Annotated[str, typer.Option(envvar="POD_NAME", help="Pod name shown by /v1/info.")] = (
        socket.gethostname()
    ),
    bind: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    control_port: Annotated[
        int, typer.Option(help="Control API port, token required (0: any free port).")
    ] = 8470,
    metrics_port: Annotated[
        int, typer.Option(help="/metrics and /healthz port (0: any free port).")
    ] = 9470,
    transfer_port: Annotated[
        int, typer.Option(help="Rendezvous store for peer transfers (0: any free port).")
    ] = 29470,
    peer_transfers: Annotated[
        bool, typer.Option(help="Serve peer transfers (else: checkpoint and local only).")
    ] = True,
    backend: Annotated[str, typer.Option(help="Peer transfer backend: gloo or nccl.")] = "gloo",
    checkpoint: Annotated[
        Path | None, typer.Option(help="Safetensors checkpoint to re-read experts from.")
    ] = None,
    checkpoint_key: Annotated[
        str, typer.Option(help="Tensor name template with {layer}, {expert}, {name}.")
    ] = DEFAULT_KEY_TEMPLATE,
    wait_seconds: Annotated[float, typer.Option(help="How long to wait for the engine.")] = 300.0,
    ports_file: Annotated[
        Path | None, typer.Option(help="Write the bound ports here (JSON; for port 0).")
    ] = None,
    ranks_per_pod: Annotated[
        int,
        typer.Option(
            help="EP ranks (GPUs) of this pod: one expert table per local rank, in "
            "TABLE_DIR/local-0 … local-(N-1) (TABLE_DIR itself for 1)."
        ),
    ] = 1,
) -> None:
    """Attach to the engine's expert table and serve the control API and /metrics; or, with
    another --source, export the engine's own load output on /metrics."""
    if source != "table":
        _serve_source(source, stats_path, engine_url, placement_file, layer_ids, experts,
                      poll_seconds, bind, metrics_port, ports_file)  # fmt: skip
        return
    from eplb_sidecar.runtime import SidecarOptions, authenticator, run_sidecar

    if backend not in ("gloo", "nccl"):
        raise typer.BadParameter("must be gloo or nccl", param_hint="--backend")
    if auth not in ("kubernetes", "token-file"):
        _fail("serve", "--auth must be kubernetes or token-file")
    if table_dir is None:
        _fail("serve", "--source table needs --table-dir")
    if auth == "token-file" and token_file is None:
        _fail("serve", "--auth token-file needs --token-file")
    if not 1 <= ranks_per_pod <= MAX_RANKS_PER_POD:
        _fail("serve", f"--ranks-per-pod must be in 1..{MAX_RANKS_PER_POD}")
    options = SidecarOptions(
        table_dir=table_dir,
        auth=auth,  # type: ignore[arg-type]
        token_file=token_file,
        audience=audience,
        namespace=namespace,
        pod=pod,
        bind=bind,
        control_port=control_port,
        metrics_port=metrics_port,
        transfer_port=transfer_port,
        peer_transfers=peer_transfers,
        backend=backend,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        checkpoint_key=checkpoint_key,
        wait_seconds=wait_seconds,
        ports_file=ports_file,
        ranks_per_pod=ranks_per_pod,
    )
    try:
        checker = authenticator(options)
    except ValueError as error:
        _fail("serve", str(error))
    run_sidecar(options, checker)


@app.command("engine")
def engine_command(
    table_dir: TableDir,
    rank: Annotated[int, typer.Option(help="EP rank of this engine.")] = 0,
    pod_index: Annotated[
        int | None,
        typer.Option(
            help="Index of this engine's pod in its group (a StatefulSet ordinal): the EP rank "
            "is then pod-index x ranks-per-pod + local-rank, instead of --rank."
        ),
    ] = None,
    ranks_per_pod: Annotated[
        int, typer.Option(help="EP ranks of the pod (one engine process each).")
    ] = 1,
    local_rank: Annotated[
        int,
        typer.Option(help="This engine's rank within its pod: its table is TABLE_DIR/local-N."),
    ] = 0,
    ranks: Annotated[int, typer.Option(help="EP ranks in the group.")] = 4,
    group: Annotated[str, typer.Option(help="EP group (serving replica) name.")] = "0",
    layers: Annotated[int, typer.Option(help="MoE layers.")] = 4,
    experts: Annotated[int, typer.Option(help="Logical experts per layer.")] = 16,
    slots_per_rank: Annotated[int, typer.Option(help="Physical expert slots per rank.")] = 5,
    hidden: Annotated[int, typer.Option(help="Hidden size H.")] = 64,
    intermediate: Annotated[int, typer.Option(help="Expert intermediate size I.")] = 32,
    top_k: Annotated[int, typer.Option(help="Experts per token.")] = 2,
    dtype: Annotated[str, typer.Option(help="Weight dtype.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu or cuda[:n] (CUDA IPC).")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of weights and workload.")] = 0,
    skew: Annotated[float, typer.Option(help="Zipf exponent of expert popularity.")] = 1.2,
    tokens_per_step: Annotated[int, typer.Option(help="Tokens per step.")] = 256,
    step_interval: Annotated[float, typer.Option(help="Seconds between steps.")] = 0.02,
    tokens_per_second: Annotated[
        int | None, typer.Option(help="Serve this token rate instead of fixed steps.")
    ] = None,
    bind: Annotated[str, typer.Option(help="Engine API address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Engine API port (workload, probe).")] = 8000,
    write_checkpoint: Annotated[
        Path | None, typer.Option(help="Write the model's checkpoint here and exit.")
    ] = None,
    ports_file: Annotated[
        Path | None, typer.Option(help="Write the bound port here (JSON; for port 0).")
    ] = None,
    implementation: Annotated[
        str, typer.Option(help="reference, or transformers (Hugging Face model code).")
    ] = "reference",
    model: Annotated[
        str | None, typer.Option(help="transformers: mixtral, qwen3-moe or deepseek-v3.")
    ] = None,
    dispatch_block: Annotated[
        int, typer.Option(help="transformers: (token, expert) pairs per dispatch block.")
    ] = 16,
    dist_init: Annotated[
        str | None, typer.Option(help="transformers: engines' rendezvous (tcp://… or file://…).")
    ] = None,
) -> None:
    """Run an MoE engine (the reference engine, or a Hugging Face transformers model): publish
    its expert table and serve token batches."""
    if implementation not in ("reference", "transformers"):
        _fail("engine", "--implementation must be reference or transformers")
    from eplb_sidecar.contract.pod import local_table_dirs
    from eplb_sidecar.engine.config import EngineConfig, Workload

    if not 1 <= ranks_per_pod <= MAX_RANKS_PER_POD or not 0 <= local_rank < ranks_per_pod:
        _fail("engine", f"need 1 <= --ranks-per-pod <= {MAX_RANKS_PER_POD} and "
                        "0 <= --local-rank < --ranks-per-pod")  # fmt: skip
    if pod_index is not None:
        rank = pod_index * ranks_per_pod + local_rank
    if ranks % ranks_per_pod or not 0 <= rank < ranks:
        _fail("engine", f"rank {rank} of {ranks} ranks, {ranks_per_pod} per pod: --ranks must "
                        "be a multiple of --ranks-per-pod and the rank below --ranks")  # fmt: skip
    table_dir = local_table_dirs(table_dir, ranks_per_pod)[local_rank]
    config = EngineConfig(
        group=group,
        rank=rank,
        ranks=ranks,
        layers=layers,
        experts=experts,
        slots_per_rank=slots_per_rank,
        hidden=hidden,
        intermediate=intermediate,
        top_k=top_k,
        dtype=dtype,
        device=device,
        seed=seed,
        workload=Workload(
            skew=skew,
            tokens_per_step=tokens_per_step,
            step_interval=step_interval,
            tokens_per_second=tokens_per_second,
        ),
    )
    if write_checkpoint is not None:
        from eplb_sidecar.engine.checkpoint import write_checkpoint as write

        write(write_checkpoint, config)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if implementation == "transformers":
        from eplb_sidecar.adapters.transformers.options import check_options

        try:
            options = check_options(config, model, dispatch_block=dispatch_block,
                                    dist_init=dist_init)  # fmt: skip
        except ValueError as error:
            _fail("engine", str(error))
        from eplb_sidecar.adapters.transformers.main import run_transformers_engine

        run_transformers_engine(config, options, table_dir, bind, port, ports_file)
        return
    # The reference engine is local tooling (eplb_local), which the sidecar never imports:
    # it is found as the `eplb.engines` entry point that package registers.
    found = [point for point in entry_points(group="eplb.engines") if point.name == "reference"]
    if not found:
        _fail("engine", "the reference engine is not installed here (it is local tooling, "
                        "in no image): pip install 'eplb-k8s[demo]'")  # fmt: skip
    found[0].load()(config, table_dir, bind, port, ports_file)


def _serve_source(
    source: str,
    stats_path: Path | None,
    engine_url: str | None,
    placement_file: Path | None,
    layer_ids: str | None,
    experts: int | None,
    poll_seconds: float,
    bind: str,
    metrics_port: int,
    ports_file: Path | None,
) -> None:
    """``serve --source vllm-stats|sglang|trtllm``: checked options, then the exporter."""
    from eplb_core.errors import InvalidInputError
    from eplb_sidecar.runtime import run_source_sidecar
    from eplb_sidecar.sources import SOURCES
    from eplb_sidecar.sources.counters import ExpertCounters
    from eplb_sidecar.sources.layers import parse_layer_ids
    from eplb_sidecar.sources.serve import SourceOptions, build_source

    if source not in SOURCES:
        _fail("serve", f"--source must be one of {', '.join(SOURCES)}, not {source!r}")
    if poll_seconds <= 0 or (experts is not None and experts < 1):
        _fail("serve", "--poll-seconds and --experts must be positive")
    try:
        ids = parse_layer_ids(layer_ids) if layer_ids is not None else None
        options = SourceOptions(
            source=source,  # checked against SOURCES above
            stats_path=stats_path, engine_url=engine_url, placement_file=placement_file,
            layer_ids=ids, experts=experts, poll_seconds=poll_seconds,
        )  # fmt: skip
        counters = ExpertCounters()
        built = build_source(options, counters)
    except (InvalidInputError, ValueError) as error:
        _fail("serve", str(error))
    run_source_sidecar(built, counters, poll_seconds, bind, metrics_port, ports_file)


def _fail(command: str, message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2, nothing started."""
    typer.echo(f"eplb-sidecar {command}: {message}", err=True)
    raise typer.Exit(2)
