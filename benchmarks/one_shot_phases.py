"""Phases of a one-shot placement in a fresh process, as `eplb plan` runs them.

    python benchmarks/one_shot_phases.py STATS RANKS REDUNDANT NODES GROUPS

Prints one JSON object: seconds per phase (wall clock).  Kept apart from
benchmarks/placement.py, whose own imports (torch, numba, the placement package) would hide
the costs measured here.  The plan path imports no torch, and no numba where the kernels are
compiled ahead of time: the last phases say so.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    stats_path, ranks, redundant, nodes, groups = sys.argv[1:6]
    marks: dict[str, float] = {}
    started = time.perf_counter()
    import numpy  # noqa: F401

    marks["import numpy"] = time.perf_counter() - started
    started = time.perf_counter()
    from eplb_core.formats.stats import read_stats
    from eplb_operator.cli import main as _cli  # noqa: F401
    from eplb_operator.cli import plan as _plan_command  # noqa: F401
    from eplb_operator.formats.expertplacement import check_api_limits
    from eplb_operator.formats.mappings import document_on, render
    from eplb_operator.placement import Topology, kernel_build, plan
    from eplb_operator.placement.rebalance import warm_up

    marks["import the CLI, formats and placement"] = time.perf_counter() - started
    started = time.perf_counter()
    kernel_build.build()
    kernels = warm_up()
    marks["load the placement kernels"] = time.perf_counter() - started
    started = time.perf_counter()
    stats = read_stats(Path(stats_path))
    topology = Topology.from_redundant(
        stats.num_experts, int(ranks), int(redundant), int(nodes), int(groups)
    )
    result = plan(stats.load, topology)
    marks["read stats + plan"] = time.perf_counter() - started
    marks["of which plan() compute"] = result.compute_seconds
    started = time.perf_counter()
    doc = document_on(
        result.placement, stats.layer_ids, stats.model, topology, hidden_layers=stats.hidden_layers
    )
    check_api_limits(doc)
    render(doc, "expertplacement", "one-shot")
    marks["check against the API + render"] = time.perf_counter() - started
    marks["torch imported (1 = yes)"] = float("torch" in sys.modules)
    marks["numba imported (1 = yes)"] = float("numba" in sys.modules)
    marks["kernels compiled ahead of time (1 = yes)"] = float(kernels.origin == "ahead-of-time")
    print(json.dumps(marks))


if __name__ == "__main__":
    main()
