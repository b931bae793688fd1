"""The expert table: one engine's counters, routing table and expert weights in shared memory.

Files in one directory (an ``emptyDir`` with ``medium: Memory`` shared by the engine and
sidecar containers); every array is a ``torch.from_file(shared=True)`` mapping, so a write
by one process is seen by the other without a copy:

========================  =========  ======================================================
file                      shape      written by / meaning
========================  =========  ======================================================
``manifest.json``                    engine, once: :class:`TableLayout`
``counters.i64``          [L, S]     engine: cumulative tokens per local slot
``counter_base.i64``      [L, S]     sidecar, at commit: counter value when a slot changed
``group_load.i64``        [L, R]     engine, optional: cumulative tokens per rank of its
                                     EP group (``-1`` when the engine does not know it)
``routing.i64``           [L, P]     sidecar, at commit: ``phy2log`` of every slot
``revisions.i64``         [L]        sidecar, at commit: placement revision per layer
``epoch.i64``             [2]        sidecar: [0] bumped after every commit; [1] is 1 while
                                     a commit waits for the step boundary
``weights/<name>.bin``    [L, S, …]  engine (``transport="shm"``); or ``weights.cuda-ipc``:
                                     pickled CUDA IPC handles of the engine's tensors
``step.lock``                        ``flock``: the engine holds it for each step, the
                                     sidecar for each commit
========================  =========  ======================================================
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.multiprocessing.reductions import reduce_tensor

from eplb_sidecar.contract.layout import MANIFEST_NAME, TableLayout

CUDA_IPC_NAME = "weights.cuda-ipc"
_POLL_SECONDS = 0.0005
_MAX_YIELD_SECONDS = 2.0


class TableNotReadyError(TimeoutError):
    """The engine has not published its table (yet)."""


# The engine and the sidecar are two containers, often two users (a vLLM image runs as
# root, the sidecar as 65532): every file of the table is read-write for its group, and
# the pod's fsGroup — the group of the shared emptyDir, set-group-ID — is that group.
FILE_MODE = 0o660
DIRECTORY_MODE = 0o2770


def _create_file(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _map(path: Path, shape: tuple[int, ...], dtype: torch.dtype, create: bool) -> torch.Tensor:
    numel = 1
    for size in shape:
        numel *= size
    if create:
        _create_file(path, numel * dtype.itemsize)
    return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)


class ExpertTable:
    """One rank's shared expert table (see the module docstring for the files).

    Attributes:
        counters: ``[L, S]`` int64, cumulative tokens per local slot.
        counter_base: ``[L, S]`` int64, counter value at the last change of the slot.
        group_load: ``[L, R]`` int64, cumulative tokens per rank of the group, or -1.
        routing: ``[L, P]`` int64, ``phy2log`` of the whole group.
        revisions: ``[L]`` int64, placement revision served per layer.
        weights: name → ``[L, S, *spec.shape]`` expert weights of the local slots.
    """

    def __init__(self, directory: Path, layout: TableLayout, create: bool) -> None:
        self.directory = directory
        self.layout = layout
        L, S, R, P = layout.layers, layout.slots_per_rank, layout.ranks, layout.num_slots
        self.counters = _map(directory / "counters.i64", (L, S), torch.int64, create)
        self.counter_base = _map(directory / "counter_base.i64", (L, S), torch.int64, create)
        self.group_load = _map(directory / "group_load.i64", (L, R), torch.int64, create)
        self.routing = _map(directory / "routing.i64", (L, P), torch.int64, create)
        self.revisions = _map(directory / "revisions.i64", (L,), torch.int64, create)
        self._epoch = _map(directory / "epoch.i64", (2,), torch.int64, create)
        self._lock_path = directory / "step.lock"
        self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        if create:
            os.fchmod(self._lock_fd, FILE_MODE)
        self.weights: dict[str, torch.Tensor] = {}
        self._seen_epoch: int | None = None
        # flock excludes other processes only: threads of the engine sharing this fd (its
        # serving loop and a probe) would both "hold" it, and one would read routes the
        # other is rebuilding after a commit.
        self._step_thread_lock = threading.Lock()

    # -- engine side ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: Path,
        layout: TableLayout,
        phy2log: torch.Tensor,
        cuda_weights: dict[str, torch.Tensor] | None = None,
    ) -> ExpertTable:
        """Publish a table.  ``phy2log`` ``[L, P]`` is the placement the weights hold.

        With ``transport="shm"`` the weight files are created (zeroed) for the engine to
        fill; with ``"cuda-ipc"`` the engine passes its own ``cuda_weights``.  The manifest
        is written last, atomically: its presence means the table is complete.
        """
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        table = cls(directory, layout, create=True)
        table.routing.copy_(phy2log)
        table.group_load.fill_(-1)
        if layout.transport == "shm":
            (directory / "weights").mkdir(exist_ok=True)
            (directory / "weights").chmod(DIRECTORY_MODE)
            table.weights = table._map_weights(create=True)
        else:
            if cuda_weights is None:
                raise ValueError("transport cuda-ipc needs the engine's cuda_weights")
            table.weights = dict(cuda_weights)
            handles = {
                name: reduce_tensor(t)  # type: ignore[no-untyped-call]
                for name, t in cuda_weights.items()
            }
            tmp = directory / (CUDA_IPC_NAME + ".tmp")
            tmp.write_bytes(pickle.dumps(handles))
            tmp.replace(directory / CUDA_IPC_NAME)
        tmp = directory / (MANIFEST_NAME + ".tmp")
        tmp.write_text(layout.model_dump_json(indent=2))
        tmp.replace(directory / MANIFEST_NAME)
        return table

    @contextmanager
    def engine_step(self) -> Iterator[bool]:
        """Hold the step lock for one engine step; yields True when a commit landed since.

        A commit waiting for the boundary goes first: the engine does not start a new step
        while one is requested (flock alone is not fair), for at most ``_MAX_YIELD_SECONDS``
        so that a sidecar that died mid-request cannot stall serving.
        """
        deadline = time.monotonic() + _MAX_YIELD_SECONDS
        while int(self._epoch[1]) != 0 and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        with self._step_thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                epoch = int(self._epoch[0])
                changed = epoch != self._seen_epoch
                self._seen_epoch = epoch
                yield changed
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- sidecar side --------------------------------------------------------------------
    @classmethod
    def attach(cls, directory: Path, timeout: float = 0.0) -> ExpertTable:
        """Open a table an engine published; wait up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        manifest = directory / MANIFEST_NAME
        while not manifest.exists():
            if time.monotonic() >= deadline:
                raise TableNotReadyError(f"no expert table at {directory} (no {MANIFEST_NAME})")
            time.sleep(0.05)
        layout = TableLayout.model_validate(json.loads(manifest.read_text()))
        table = cls(directory, layout, create=False)
        if layout.transport == "shm":
            table.weights = table._map_weights(create=False)
        else:
            handles: dict[str, Any] = pickle.loads((directory / CUDA_IPC_NAME).read_bytes())
            table.weights = {name: fn(*args) for name, (fn, args) in handles.items()}
        return table

    @contextmanager
    def commit_window(self, timeout: float) -> Iterator[None]:
        """Hold the engine at a step boundary (raises TimeoutError after ``timeout`` s).

        Inside, nothing the engine reads is in use: weights and routing may change.  On
        exit the epoch is bumped so the engine re-reads its routing table.
        """
        with commit_window([self], timeout):
            yield

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def local_placement(self) -> torch.Tensor:
        """``[L, S]``: logical expert of each local slot."""
        first = self.layout.first_slot
        return self.routing[:, first : first + self.layout.slots_per_rank]

    def close(self) -> None:
        os.close(self._lock_fd)

    def _map_weights(self, create: bool) -> dict[str, torch.Tensor]:
        L, S = self.layout.layers, self.layout.slots_per_rank
        return {
            spec.name: _map(
                self.directory / "weights" / f"{spec.name}.bin",
                (L, S, *spec.shape),
                spec.torch_dtype,
                create,
            )
            for spec in self.layout.weights
        }


@contextmanager
def commit_window(tables: list[ExpertTable], timeout: float) -> Iterator[None]:
    """Hold the engines of ``tables`` (the local ranks of one pod) at a step boundary
    together; raises TimeoutError when they are not all there within ``timeout`` s.

    Every engine is asked to yield before any lock is taken: ranks of one EP group step in
    lockstep (their all-to-all waits for each other), so holding one while another is still
    asked nothing would leave that one stuck in a step waiting for the held one.  On exit
    every epoch is bumped so each engine re-reads its routing table.
    """
    deadline = time.monotonic() + timeout
    held: list[ExpertTable] = []
    for table in tables:
        table._epoch[1] = 1
    try:
        for table in tables:
            while True:
                try:
                    fcntl.flock(table._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(table)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"engine of {table.directory} did not reach a step boundary "
                            f"within {timeout:g} s"
                        ) from None
                    time.sleep(_POLL_SECONDS)
        try:
            yield
            for table in tables:
                table._epoch[0] += 1
        finally:
            for table in held:
                fcntl.flock(table._lock_fd, fcntl.LOCK_UN)
    finally:
        for table in tables:
            table._epoch[1] = 0
