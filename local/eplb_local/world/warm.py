"""Fill the operator pods' shared numba cache (:func:`compile_cache`) before worlds start.

A fresh checkout's first operator pod compiles the placement kernels during its first pass:
about a minute of CPU on a busy 2-core machine, inside a test's or the demo's wait.  Run
once over the shapes the local
worlds plan: the reference engine's (4 ranks), the demo's, and a two-node hierarchical one,
with the load and placement kinds the operator passes (float64 tensors, int64 placements).
What a PVC-backed ``operator.compileCache`` does for a cluster, done up front.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

from eplb_local.world.world import compile_cache

OPERATOR_UID = 65532  # the operator image's user (charts/eplb-operator runs it unprivileged)
# (layers, experts, ranks, slots per rank, nodes, expert groups)
SHAPES = [(4, 12, 4, 4, 1, 1), (8, 16, 4, 5, 1, 1), (4, 16, 8, 3, 2, 2), (3, 8, 4, 3, 1, 1)]


def warm_compile_cache(timeout: float = 600.0) -> None:
    """Compile into the shared cache, then give what was written to the operator's user (it
    replaces index files when it adds a kernel; the cache directory is sticky)."""
    cache = compile_cache()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    # One at a time: test workers (pytest-xdist) each warm the cache as their cluster starts,
    # and the second then only loads what the first compiled.
    with open(cache / ".warming.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(
            [sys.executable, "-m", "eplb_local.world.warm"], env=env, timeout=timeout,
            check=True, capture_output=True,
        )  # fmt: skip
        if os.geteuid() == 0:
            for path in [cache, *cache.rglob("*")]:
                if path != cache:
                    os.chown(path, OPERATOR_UID, OPERATOR_UID)


def main() -> None:
    import torch

    from eplb_operator.placement import Topology, plan
    from eplb_operator.workloads import zipf_load

    for layers, experts, ranks, slots, nodes, groups in SHAPES:
        topology = Topology(experts, ranks, slots, nodes, groups)
        load = zipf_load(layers, experts, 1.2, seed=layers)
        first = plan(load, topology)
        shifted = zipf_load(layers, experts, 1.4, seed=layers + 1)
        plan(shifted, topology, previous=first.placement, reference_load=load)
        plan(shifted.to(torch.float32), topology, previous=first.placement)


if __name__ == "__main__":
    main()
