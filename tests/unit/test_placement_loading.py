"""How a one-shot process (``eplb plan``) loads the placement kernels: one kernel per
signature a plan uses, from numba's cache without numba's compile-time registries."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from eplb_operator.placement import Topology, rebalance
from eplb_operator.placement.count_search import exhaustive_options
from eplb_operator.placement.rebalance import warm_up

# A module numba's refresh imports before each cached load, and neither a plain import of
# numba nor the kernels' own environments do: loaded only for compiling.
REGISTRY = "numba.np.polynomial.polynomial_core"


def test_options_are_read_only_for_the_exhaustive_and_the_local_search() -> None:
    """One argument type, so one ``place_layers`` kernel to load, whatever the shape."""
    exhaustive = exhaustive_options(8, 12)  # Mixtral: 330 count vectors
    local = exhaustive_options(64, 72)  # DeepSeek-V3's node: too many, local search
    assert exhaustive.shape == (330, 8) and local.shape == (0, 64)
    assert not exhaustive.flags.writeable and not local.flags.writeable


def run_child(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        timeout=600,
    )
    return result.stdout.strip().splitlines()[-1]


def test_one_shot_warm_up_loads_cached_kernels_without_compile_registries() -> None:
    warm_up()  # fills numba's cache for the child (compiled once per checkout)
    load = np.random.default_rng(3).pareto(0.8, (4, 16)) * 100
    topology = Topology.from_redundant(16, 4, 4, num_nodes=2, num_groups=4)
    expected = rebalance(load, topology).tolist()
    out = run_child(
        f"""
        import sys
        import numpy as np
        from eplb_operator.placement import Topology, rebalance
        from eplb_operator.placement.rebalance import warm_up
        warm_up(one_shot=True)
        loaded = {REGISTRY!r} in sys.modules
        load = np.random.default_rng(3).pareto(0.8, (4, 16)) * 100
        topology = Topology.from_redundant(16, 4, 4, num_nodes=2, num_groups=4)
        print(loaded, rebalance(load, topology).tolist())
        """
    )
    assert out == f"False {expected}"


def test_a_kernel_missing_from_the_cache_still_compiles_while_loading_cached_only(
    tmp_path: Path,
) -> None:
    """The refresh skipped for cached kernels is done by numba's compiler itself."""
    (tmp_path / "kernel_module.py").write_text(
        textwrap.dedent(
            """
            import numba
            import numpy as np

            @numba.njit(cache=True)
            def smallest(values):
                return np.sort(values)[0] + np.linalg.norm(values)
            """
        )
    )
    out = run_child(
        f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(tmp_path)!r})
        from eplb_operator.placement.rebalance import _cached_kernels_only
        from kernel_module import smallest
        with _cached_kernels_only():
            print(smallest(np.array([3.0, 4.0, 0.0])))
        """,
        NUMBA_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert float(out) == 5.0
