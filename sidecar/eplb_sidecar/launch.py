"""Local pods: an EP group of (engine, sidecar) process pairs on this machine.

What the tests, the sandbox and the benchmarks start instead of GPU pods: each pod is two
real processes sharing a table directory, the sidecars form their gloo groups over
localhost.  Ports are picked free; ``LocalGroup.stop()`` (or the context manager) ends
every process.  The engines are the reference engine, or with ``transformers=`` a Hugging
Face MoE model (:mod:`eplb_sidecar.adapters.transformers`), whose engines form their own
gloo group through a rendezvous file in the work directory.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import torch

from eplb_sidecar.adapters.transformers.options import TransformersOptions
from eplb_sidecar.adapters.transformers.probe import LogitsProbe, merge_logits
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.probe import ProbePart, ProbeRequest, merge_probe_parts
from eplb_sidecar.engine.reference import ReferenceEngine


def stop_processes(processes: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM every process, then SIGKILL those still running after ``grace`` seconds."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalPod:
    """One pod: its processes, ports and table directory."""

    name: str
    rank: int
    table_dir: Path
    # 0 until the processes report the ports they bound (they pick free ones themselves,
    # which no other process can take in between).
    engine_port: int = 0
    control_port: int = 0
    metrics_port: int = 0
    transfer_port: int = 0
    engine: subprocess.Popen[bytes] | None = None
    sidecar: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def engine_url(self) -> str:
        return f"http://127.0.0.1:{self.engine_port}"

    @property
    def store(self) -> str:
        return f"127.0.0.1:{self.transfer_port}"


class LocalGroup:
    """Start ``config.ranks`` pods of one EP group under ``workdir``."""

    def __init__(
        self,
        config: EngineConfig,
        workdir: Path,
        checkpoint: Path | None = None,
        token: str | None = None,
        step_interval: float | None = None,
        serve_engines: bool = True,
        devices: list[str] | None = None,
        backend: str = "gloo",
        sidecar_env: dict[int, dict[str, str]] | None = None,
        transformers: TransformersOptions | None = None,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.checkpoint = checkpoint
        self.token = token or secrets.token_hex(16)
        self.token_file = workdir / "token"
        # False: the tables are published by this process and nothing serves tokens (for
        # control-plane benchmarks with many pods: half the processes).
        self.serve_engines = serve_engines
        # Per-rank device (e.g. one GPU each: cuda:0, cuda:1); default config.device.
        self.devices = devices or [config.device] * config.ranks
        self.backend = backend
        # Extra environment of the first sidecar of a rank (fault injection: a container
        # restarted later starts without it).
        self.sidecar_env = sidecar_env or {}
        # A Hugging Face model instead of the reference engine (its rendezvous is ours).
        self.transformers = transformers
        self.rendezvous = workdir / "engines.rendezvous"
        if transformers is not None and not serve_engines:
            raise ValueError("transformers engines always serve (serve_engines=False is for "
                             "the reference engine's tables)")  # fmt: skip
        if step_interval is not None:
            config.workload.step_interval = step_interval
        self.pods = [
            LocalPod(
                name=f"{config.group}-rank-{rank}",
                rank=rank,
                table_dir=workdir / f"pod-{rank}" / "table",
            )
            for rank in range(config.ranks)
        ]

    # -- the engines' own API -----------------------------------------------------------
    def probe(self, tokens: int = 16, seed: int = 12345) -> torch.Tensor:
        """The group's outputs for fixed inputs: the reference engine's MoE outputs
        ``[L, T, H]`` (see engine.probe), a transformers model's logits ``[T, vocab]``
        (every rank's, checked to be the same)."""
        body = ProbeRequest(tokens=tokens, seed=seed).model_dump_json().encode()
        if self.transformers is not None:
            return merge_logits(
                [
                    LogitsProbe.model_validate_json(post(f"{pod.engine_url}/v1/probe", body))
                    for pod in self.pods
                ]
            )
        parts = [
            ProbePart.model_validate_json(post(f"{pod.engine_url}/v1/probe", body))
            for pod in self.pods
        ]
        return merge_probe_parts(parts)

    def set_workload(self, **changes: object) -> None:
        body = json.dumps(changes).encode()
        for pod in self.pods:
            post(f"{pod.engine_url}/v1/workload", body)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> LocalGroup:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rendezvous.unlink(missing_ok=True)  # a stale file would join an old group
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        for pod in self.pods:
            if self.serve_engines:
                self.start_engine(pod)
            else:
                rank_config = self.config.model_copy(
                    update={"rank": pod.rank, "device": self.devices[pod.rank]}
                )
                ReferenceEngine(rank_config, pod.table_dir).table.close()
            self.start_sidecar(pod, self.sidecar_env.get(pod.rank))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # never leave half a group running
            raise
        return self

    def start_engine(self, pod: LocalPod) -> None:
        self._ports_file(pod, "engine").unlink(missing_ok=True)
        config, workload = self.config, self.config.workload
        args = [
            "engine", "--table-dir", str(pod.table_dir), "--rank", str(pod.rank),
            "--ranks", str(config.ranks), "--group", config.group,
            "--layers", str(config.layers), "--experts", str(config.experts),
            "--slots-per-rank", str(config.slots_per_rank), "--hidden", str(config.hidden),
            "--intermediate", str(config.intermediate), "--top-k", str(config.top_k),
            "--dtype", config.dtype, "--device", self.devices[pod.rank], "--seed", str(config.seed),
            "--skew", str(workload.skew), "--tokens-per-step", str(workload.tokens_per_step),
            "--step-interval", str(workload.step_interval), "--port", "0",
            "--ports-file", str(self._ports_file(pod, "engine")),
        ]  # fmt: skip
        if workload.tokens_per_second is not None:
            args += ["--tokens-per-second", str(workload.tokens_per_second)]
        if self.transformers is not None:
            args += [
                "--implementation", "transformers", "--model", self.transformers.architecture,
                "--dispatch-block", str(self.transformers.dispatch_block),
                "--dist-init", self.rendezvous.resolve().as_uri(),
            ]  # fmt: skip
        pod.engine = self._spawn(pod, "engine", args)

    def start_sidecar(self, pod: LocalPod, env: dict[str, str] | None = None) -> None:
        self._ports_file(pod, "sidecar").unlink(missing_ok=True)
        args = [
            "serve", "--table-dir", str(pod.table_dir), "--auth", "token-file",
            "--token-file", str(self.token_file),
            "--pod", pod.name, "--bind", "127.0.0.1",
            # A restarted container keeps its pod's ports (the Pod object names them).
            "--control-port", str(pod.control_port), "--metrics-port", str(pod.metrics_port),
            "--transfer-port", str(pod.transfer_port),
            "--ports-file", str(self._ports_file(pod, "sidecar")), "--backend", self.backend,
        ]  # fmt: skip
        if self.checkpoint is not None:
            args += ["--checkpoint", str(self.checkpoint)]
        pod.sidecar = self._spawn(pod, "sidecar", args, env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for pod in self.pods:
            roles = ["engine", "sidecar"] if self.serve_engines else ["sidecar"]
            for role in roles:
                process = pod.engine if role == "engine" else pod.sidecar
                ports = self._ports_file(pod, role)
                while not (ports.exists() and _healthy(self._read_ports(pod, role, ports))):
                    if process is not None and process.poll() is not None:
                        raise RuntimeError(f"{pod.name}: {role} exited; see {pod.logs[-1]}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{pod.name}: {role} not ready")
                    time.sleep(0.1)

    def _ports_file(self, pod: LocalPod, role: str) -> Path:
        return pod.table_dir.parent / f"{role}.ports.json"

    @staticmethod
    def _read_ports(pod: LocalPod, role: str, path: Path) -> str:
        """Take the ports a process bound; returns the URL of its health endpoint."""
        ports = json.loads(path.read_text())
        if role == "engine":
            pod.engine_port = int(ports["engine"])
            return pod.engine_url
        pod.control_port = int(ports["control"])
        pod.metrics_port = int(ports["metrics"])
        pod.transfer_port = int(ports["transfer"])
        return pod.metrics_url

    def kill(self, pod: LocalPod, which: str = "sidecar") -> None:
        """SIGKILL one process of a pod (a crash, not a shutdown)."""
        process = pod.sidecar if which == "sidecar" else pod.engine
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def stop(self) -> None:
        stop_processes([p for pod in self.pods for p in (pod.sidecar, pod.engine) if p is not None])

    def __enter__(self) -> LocalGroup:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def restart_pod(self, pod: LocalPod, timeout: float = 120.0) -> LocalPod:
        """The pod deleted and created again: both processes, a fresh table, new ports."""
        if self.transformers is not None:
            # Like vLLM's and SGLang's EP groups, the engines' process group is fixed at start.
            raise ValueError("a transformers engine group cannot take a restarted rank")
        self.kill(pod, "sidecar")
        self.kill(pod, "engine")
        fresh = LocalPod(
            name=pod.name,
            rank=pod.rank,
            table_dir=pod.table_dir.parent.with_name(pod.table_dir.parent.name + "-new") / "table",
        )
        self.pods[self.pods.index(pod)] = fresh
        self.start_engine(fresh)
        self.start_sidecar(fresh)
        self.wait_ready(timeout)
        return fresh

    def _spawn(
        self, pod: LocalPod, role: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.workdir / f"pod-{pod.rank}" / f"{role}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        pod.logs.append(log)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra_env or {}))
        with open(log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "eplb_sidecar", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )


def post(url: str, body: bytes) -> bytes:
    """POST a JSON body; the answer's body."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return bytes(response.read())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
