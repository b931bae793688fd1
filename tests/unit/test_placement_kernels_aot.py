"""The placement kernels compiled ahead of time (``placement.kernels``): the same placements as
numba's just-in-time kernels, and an ``eplb plan`` that never imports numba once they are
built; without them (no cache, no compiler) numba's kernels serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eplb_operator.placement import Topology, kernel_build, kernels, plan, rebalance
from eplb_operator.placement.count_search import exhaustive_options
from eplb_operator.placement.packing import pack
from eplb_operator.placement.replication import replicate
from tests.conftest import REPO

DEEPSEEK = REPO / "examples" / "stats" / "deepseek-v3-synthetic.json"
PLAN = ["plan", "--stats", str(DEEPSEEK), "--ranks", "32", "--redundant", "32", "--nodes", "4",
        "--groups", "8", "--summary-json"]  # fmt: skip

# (experts, ranks, redundant slots, nodes, groups, layers): Mixtral's node takes the
# exhaustive count search, DeepSeek-V3's the local one, and both group packing onto nodes.
SHAPES = [(8, 8, 8, 1, 1, 6), (256, 32, 32, 4, 8, 6), (128, 16, 16, 1, 1, 6), (64, 8, 0, 2, 4, 4)]


def loads(experts: int, layers: int, seed: int) -> list[np.ndarray]:
    """``[layers, experts]`` loads of every kind the policy meets: skewed, heavy-tailed, flat
    (all ties), with idle experts, and tiny fractions."""
    rng = np.random.default_rng(seed)
    return [
        rng.zipf(1.8, (layers, experts)).astype(np.float64),
        rng.pareto(0.8, (layers, experts)) * 1000,
        np.full((layers, experts), 7.0),
        np.where(rng.random((layers, experts)) < 0.3, 0.0, rng.random((layers, experts))),
        rng.random((layers, experts)) * 1e-9,
    ]


@pytest.fixture(scope="module")
def both() -> tuple[kernels.Kernels, kernels.Kernels]:
    """The module built into this machine's kernel cache (once per source), and numba's."""
    built = kernel_build.build()
    assert built.origin == "ahead-of-time"
    return built, kernels.just_in_time()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}e-{s[1]}r-{s[3]}n")
def test_the_compiled_module_places_exactly_as_numbas_kernels(
    both: tuple[kernels.Kernels, kernels.Kernels],
    shape: tuple[int, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    experts, ranks, redundant, nodes, groups, layers = shape
    topology = Topology.from_redundant(experts, ranks, redundant, nodes, groups)
    results = []
    for chosen in both:
        monkeypatch.setitem(kernels._chosen, "kernels", chosen)
        assert kernels.active() is chosen
        outputs = []
        for seed in range(3):
            for load in loads(experts, layers, seed):
                outputs.append(rebalance(load, topology))
                outputs.append(replicate(load, topology.num_slots))
                outputs.append(pack(load, ranks if experts % ranks == 0 else 1))
                first = plan(load, topology).placement
                outputs.append(first)
                outputs.append(plan(load[::-1].copy(), topology, previous=first).placement)
        results.append(outputs)
    aot, jit = results
    assert len(aot) == len(jit) > 0
    for ours, numbas in zip(aot, jit, strict=True):
        assert ours.dtype == numbas.dtype and np.array_equal(ours, numbas)


def eplb(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`eplb` as a user runs it, and whether numba was imported (printed last)."""
    code = (
        "import sys\nfrom eplb_core.commands import eplb\n"
        f"sys.argv = ['eplb', *{list(args)!r}]\n"
        "try:\n    eplb()\nfinally:\n    print('numba imported:', 'numba' in sys.modules)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
        env={**os.environ, **env}, check=False,
    )  # fmt: skip


def test_eplb_plan_never_imports_numba_once_built_and_falls_back_without_a_cache(
    both: tuple[kernels.Kernels, kernels.Kernels], tmp_path: Path
) -> None:
    built = eplb(*PLAN, "--output", str(tmp_path / "aot.yaml"))
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[-1] == "numba imported: False"
    assert built.stderr == ""

    blocked = tmp_path / "a-file"
    blocked.write_text("")  # no cache directory can be made under a file
    fallback = eplb(*PLAN, "--output", str(tmp_path / "jit.yaml"),
                    EPLB_KERNEL_CACHE=str(blocked / "kernels"))  # fmt: skip
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.splitlines()[-1] == "numba imported: True"
    assert fallback.stderr.startswith("eplb plan: placement kernels compiled by numba at run time")
    assert len(fallback.stderr.splitlines()) == 1, fallback.stderr
    assert (tmp_path / "jit.yaml").read_text().replace("jit", "aot") == (
        tmp_path / "aot.yaml"
    ).read_text()


def test_options_are_read_only_for_the_exhaustive_and_the_local_search() -> None:
    """One argument type for ``place_layers`` (its signature in ``kernels.SIGNATURES``),
    whatever the shape."""
    exhaustive = exhaustive_options(8, 12)  # Mixtral: 330 count vectors
    local = exhaustive_options(64, 72)  # DeepSeek-V3's node: too many, local search
    assert exhaustive.shape == (330, 8) and local.shape == (0, 64)
    assert not exhaustive.flags.writeable and not local.flags.writeable


def test_a_built_module_serves_from_a_cache_that_cannot_be_written(
    both: tuple[kernels.Kernels, kernels.Kernels], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared or read-only cache: loading takes no lock (here the lock cannot be opened)."""
    monkeypatch.setitem(kernels._chosen, "kernels", both[1])
    shutil.copy(kernels.module_path(), kernels.module_path(tmp_path))
    (tmp_path / ".build.lock").mkdir()
    assert kernel_build.build(tmp_path).origin == "ahead-of-time"
    (tmp_path / kernels.module_path(tmp_path).name).unlink()
    with pytest.raises(kernel_build.BuildError, match="Is a directory"):
        kernel_build.build(tmp_path)


def test_a_damaged_module_in_the_cache_is_never_loaded(tmp_path: Path) -> None:
    path = kernels.module_path(tmp_path)
    path.write_bytes(b"\x7fELF not really")
    assert kernels.ahead_of_time(tmp_path) is None


def test_the_module_is_named_by_the_source_it_was_built_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit of the kernels' source names another module: stale machine code never loads."""
    before = kernels.module_name()
    source = tmp_path / "compiled.py"
    source.write_bytes(kernels.SOURCE.read_bytes() + b"\n# edited\n")
    monkeypatch.setattr(kernels, "SOURCE", source)
    assert kernels.module_name() != before
