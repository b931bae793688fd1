"""Local pods: an EP group of engine and sidecar processes on this machine.

What the tests, the sandbox and the benchmarks start instead of GPU pods: each pod is real
processes sharing a table directory, one engine per local rank (``ranks_per_pod``, one by
default) and one sidecar, started with the serving chart's flags; the sidecars form their
gloo groups over localhost.  Ports are picked free; ``LocalGroup.stop()`` (or the context
manager) ends every process.  The engines are the reference engine, or with
``transformers=`` a Hugging Face MoE model (:mod:`eplb_sidecar.adapters.transformers`),
whose engines form their own gloo group through a rendezvous file in the work directory.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import torch

from eplb_local.engine.reference import ReferenceEngine
from eplb_local.processes import stop_processes
from eplb_sidecar.adapters.transformers.options import TransformersOptions
from eplb_sidecar.adapters.transformers.probe import LogitsProbe, merge_logits
from eplb_sidecar.contract.pod import local_table_dirs
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.engine.probe import ProbePart, ProbeRequest, merge_probe_parts

# Processes starting on a loaded 2-core CI machine (each imports torch) take minutes.
START_TIMEOUT = 240.0


@dataclass
class LocalPod:
    """One pod: its processes, ports and table directory.

    Pod ``rank`` of ``ranks_per_pod`` ``K`` hosts the EP ranks ``rank*K … rank*K+K-1``
    (:attr:`ranks`): one engine process per local rank ``k`` (``engines[k]``, serving on
    ``engine_urls[k]``, its table in ``table_dirs[k]``) and one sidecar for them all, given
    ``table_dir`` (see :mod:`eplb_sidecar.contract.pod`).  With one rank per pod, ``rank`` is
    the EP rank and ``table_dir`` the engine's table.
    """

    name: str
    rank: int  # the pod's index in its group (TransferGroup.ranks are such indices)
    table_dir: Path
    ranks_per_pod: int = 1
    # 0 until the processes report the ports they bound (they pick free ones themselves,
    # which no other process can take in between); engine_ports per local rank.
    engine_ports: list[int] = field(default_factory=list)
    control_port: int = 0
    metrics_port: int = 0
    transfer_port: int = 0
    engines: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sidecar: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine_ports = self.engine_ports or [0] * self.ranks_per_pod

    @property
    def ranks(self) -> range:
        """The EP ranks of the pod's local ranks, in order."""
        return range(self.rank * self.ranks_per_pod, (self.rank + 1) * self.ranks_per_pod)

    @property
    def table_dirs(self) -> list[Path]:
        """The table of each local rank (``table_dir`` itself with one rank per pod)."""
        return local_table_dirs(self.table_dir, self.ranks_per_pod)

    @property
    def engine_roles(self) -> list[str]:
        """Each local rank's engine, named as the serving chart names its container (the
        name of its log and ports files)."""
        if self.ranks_per_pod == 1:
            return ["engine"]
        return [f"engine-{k}" for k in range(self.ranks_per_pod)]

    @property
    def engine(self) -> subprocess.Popen[bytes] | None:
        """Local rank 0's engine process (the pod's only one with one rank per pod)."""
        return self.engines[0] if self.engines else None

    @property
    def engine_urls(self) -> list[str]:
        """The engine API of each local rank."""
        return [f"http://127.0.0.1:{port}" for port in self.engine_ports]

    @property
    def engine_url(self) -> str:
        """Local rank 0's engine API (the pod's only one with one rank per pod)."""
        return self.engine_urls[0]

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def store(self) -> str:
        return f"127.0.0.1:{self.transfer_port}"


class LocalGroup:
    """Start the pods of one EP group of ``config.ranks`` ranks under ``workdir``:
    ``config.ranks / ranks_per_pod`` pods, each of ``ranks_per_pod`` engines and a sidecar."""

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
        ranks_per_pod: int = 1,
    ) -> None:
        if ranks_per_pod < 1 or config.ranks % ranks_per_pod:
            raise ValueError(
                f"ranks_per_pod {ranks_per_pod} does not divide the group's {config.ranks} ranks"
            )
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
        # Extra environment of the first sidecar of a pod, by its index (fault injection: a
        # container restarted later starts without it).
        self.sidecar_env = sidecar_env or {}
        # A Hugging Face model instead of the reference engine (its rendezvous is ours).
        self.transformers = transformers
        self.rendezvous = workdir / "engines.rendezvous"
        if transformers is not None and not serve_engines:
            raise ValueError("transformers engines always serve (serve_engines=False is for "
                             "the reference engine's tables)")  # fmt: skip
        if step_interval is not None:
            config.workload.step_interval = step_interval
        self.ranks_per_pod = ranks_per_pod
        named = "rank" if ranks_per_pod == 1 else "pod"
        self.pods = [
            LocalPod(
                name=f"{config.group}-{named}-{index}",
                rank=index,
                table_dir=workdir / f"pod-{index}" / "table",
                ranks_per_pod=ranks_per_pod,
            )
            for index in range(config.ranks // ranks_per_pod)
        ]

    # -- the engines' own API -----------------------------------------------------------
    def probe(self, tokens: int = 16, seed: int = 12345) -> torch.Tensor:
        """The group's outputs for fixed inputs: the reference engine's MoE outputs
        ``[L, T, H]`` (see engine.probe), a transformers model's logits ``[T, vocab]``
        (every rank's, checked to be the same)."""
        body = ProbeRequest(tokens=tokens, seed=seed).model_dump_json().encode()
        answers = [post(f"{url}/v1/probe", body) for url in self.engine_urls]
        if self.transformers is not None:
            return merge_logits([LogitsProbe.model_validate_json(a) for a in answers])
        return merge_probe_parts([ProbePart.model_validate_json(a) for a in answers])

    def set_workload(self, **changes: object) -> None:
        body = json.dumps(changes).encode()
        for url in self.engine_urls:
            post(f"{url}/v1/workload", body)

    @property
    def engine_urls(self) -> list[str]:
        """Every engine's API, in EP rank order."""
        return [url for pod in self.pods for url in pod.engine_urls]

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> LocalGroup:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rendezvous.unlink(missing_ok=True)  # a stale file would join an old group
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        for pod in self.pods:
            if self.serve_engines:
                self.start_engines(pod)
            else:
                for rank, table_dir in zip(pod.ranks, pod.table_dirs, strict=True):
                    rank_config = self.config.model_copy(
                        update={"rank": rank, "device": self.devices[rank]}
                    )
                    ReferenceEngine(rank_config, table_dir).table.close()
            self.start_sidecar(pod, self.sidecar_env.get(pod.rank))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # never leave half a group running
            raise
        return self

    def start_engines(self, pod: LocalPod) -> None:
        """One engine process per local rank, with the serving chart's flags: each finds its
        EP rank and its table's directory from --pod-index, --ranks-per-pod, --local-rank."""
        pod.engines = [self._start_engine(pod, local) for local in range(pod.ranks_per_pod)]

    def _start_engine(self, pod: LocalPod, local: int) -> subprocess.Popen[bytes]:
        role = pod.engine_roles[local]
        self._ports_file(pod, role).unlink(missing_ok=True)
        config, workload = self.config, self.config.workload
        args = [
            "engine", "--table-dir", str(pod.table_dir), "--pod-index", str(pod.rank),
            "--ranks-per-pod", str(pod.ranks_per_pod), "--local-rank", str(local),
            "--ranks", str(config.ranks), "--group", config.group,
            "--layers", str(config.layers), "--experts", str(config.experts),
            "--slots-per-rank", str(config.slots_per_rank), "--hidden", str(config.hidden),
            "--intermediate", str(config.intermediate), "--top-k", str(config.top_k),
            "--dtype", config.dtype, "--device", self.devices[pod.ranks[local]],
            "--seed", str(config.seed), "--skew", str(workload.skew),
            "--tokens-per-step", str(workload.tokens_per_step),
            "--step-interval", str(workload.step_interval), "--port", "0",
            "--ports-file", str(self._ports_file(pod, role)),
        ]  # fmt: skip
        if workload.tokens_per_second is not None:
            args += ["--tokens-per-second", str(workload.tokens_per_second)]
        if self.transformers is not None:
            args += [
                "--implementation", "transformers", "--model", self.transformers.architecture,
                "--dispatch-block", str(self.transformers.dispatch_block),
                "--dist-init", self.rendezvous.resolve().as_uri(),
            ]  # fmt: skip
        return self._spawn(pod, role, args)

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
            "--ranks-per-pod", str(pod.ranks_per_pod),
        ]  # fmt: skip
        if self.checkpoint is not None:
            args += ["--checkpoint", str(self.checkpoint)]
        pod.sidecar = self._spawn(pod, "sidecar", args, env)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for pod in self.pods:
            processes = [
                *zip(pod.engine_roles, pod.engines, strict=False),
                ("sidecar", pod.sidecar),
            ]
            for role, process in processes:
                ports = self._ports_file(pod, role)
                while not (ports.exists() and _healthy(self._read_ports(pod, role, ports))):
                    if process is not None and process.poll() is not None:
                        raise RuntimeError(f"{pod.name}: {role} exited; see {self._log(pod, role)}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{pod.name}: {role} not ready")
                    time.sleep(0.1)

    def _ports_file(self, pod: LocalPod, role: str) -> Path:
        return pod.table_dir.parent / f"{role}.ports.json"

    @staticmethod
    def _read_ports(pod: LocalPod, role: str, path: Path) -> str:
        """Take the ports a process bound; returns the URL of its health endpoint."""
        ports = json.loads(path.read_text())
        if role != "sidecar":
            local = pod.engine_roles.index(role)
            pod.engine_ports[local] = int(ports["engine"])
            return pod.engine_urls[local]
        pod.control_port = int(ports["control"])
        pod.metrics_port = int(ports["metrics"])
        pod.transfer_port = int(ports["transfer"])
        return pod.metrics_url

    def kill(self, pod: LocalPod, which: str = "sidecar") -> None:
        """SIGKILL the sidecar of a pod, or (``"engine"``) its engines (a crash, not a
        shutdown)."""
        processes = [pod.sidecar] if which == "sidecar" else pod.engines
        for process in processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)

    def stop(self) -> None:
        stop_processes(
            [p for pod in self.pods for p in (pod.sidecar, *pod.engines) if p is not None]
        )

    def __enter__(self) -> LocalGroup:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def restart_pod(self, pod: LocalPod, timeout: float = START_TIMEOUT) -> LocalPod:
        """The pod deleted and created again: all its processes, fresh tables, new ports."""
        if self.transformers is not None:
            # Like vLLM's and SGLang's EP groups, the engines' process group is fixed at start.
            raise ValueError("a transformers engine group cannot take a restarted rank")
        self.kill(pod, "sidecar")
        self.kill(pod, "engine")
        fresh = LocalPod(
            name=pod.name,
            rank=pod.rank,
            table_dir=pod.table_dir.parent.with_name(pod.table_dir.parent.name + "-new") / "table",
            ranks_per_pod=pod.ranks_per_pod,
        )
        self.pods[self.pods.index(pod)] = fresh
        self.start_engines(fresh)
        self.start_sidecar(fresh)
        self.wait_ready(timeout)
        return fresh

    def _log(self, pod: LocalPod, role: str) -> Path:
        return self.workdir / f"pod-{pod.rank}" / f"{role}.log"

    def _spawn(
        self, pod: LocalPod, role: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self._log(pod, role)
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
