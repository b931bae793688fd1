"""The three kernels the placement calls from Python, loaded the quickest way available.

``compiled`` is the one source of the kernels.  numba compiles it just in time and keeps the
machine code in its on-disk cache, but every process still imports numba and loads each
cached kernel: 0.6 s of a one-shot ``eplb plan`` on DeepSeek-V3, a hundred times the plan's
own computation.  The same source compiled ahead of time (``numba.pycc``) is an ordinary
extension module that needs no numba and imports in milliseconds.

- :func:`active` gives the ahead-of-time module when this machine has one built for this
  exact source (the file is named by a digest of ``compiled.py``, Python's ABI and numpy's
  version), else numba's just-in-time dispatchers.  Both run the same code on the same
  numbers: the placements are byte-identical (``tests/unit/test_placement_kernels_aot.py``).
- ``kernel_build.build`` compiles the module once into the kernel cache
  (``$EPLB_KERNEL_CACHE``, else ``~/.cache/eplb/kernels``): about 20 s and a C compiler,
  where numba's first just-in-time compile of the same kernels takes a minute.  ``eplb plan``
  builds it on first use; the operator never builds (a long-lived process loads numba's
  kernels once).  Where it cannot be built (no C compiler, no writable cache, a numba
  without ``pycc``), the just-in-time kernels serve, as before.

With ``kernel_build``, the only modules of the package that touch files; the kernels and the
policy around them do no I/O.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from eplb_core.user_cache import user_cache_dir

SOURCE = Path(__file__).with_name("compiled.py")
CACHE_ENV = "EPLB_KERNEL_CACHE"

# Every kernel called from Python, and the one argument type each is called with (C-contiguous
# float64 and int64 arrays; ``place_layers``' count options read-only, as ``exhaustive_options``
# gives them).  numba's just-in-time dispatchers take the same types.
SIGNATURES = {
    "pack_batch": "void(f8[:, ::1], i8, i8[:, ::1])",  # weights [B, n], bins, out [B, n]
    "replicate_batch": "void(f8[:, ::1], i8, i8[:, ::1])",  # load [B, n], slots, out [B, n]
    # load [L, E], groups of each node [L, N, G/N], ranks per node, options [C, E/N] (read
    # only), out phy2log [L, P]
    "place_layers": "void(f8[:, ::1], i8[:, :, ::1], i8, Array(int64, 2, 'C', readonly=True), "
    "i8[:, ::1])",
}


@dataclass(frozen=True)
class Kernels:
    """The kernels the placement calls, and where they came from (``"ahead-of-time"`` or
    ``"just-in-time"``)."""

    pack_batch: Callable[..., None]
    replicate_batch: Callable[..., None]
    place_layers: Callable[..., None]
    origin: str


def kernel_cache() -> Path:
    """Where built kernel modules live: ``$EPLB_KERNEL_CACHE``, else ``~/.cache/eplb/kernels``
    (``$XDG_CACHE_HOME`` honoured)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return user_cache_dir() / "kernels"


def module_name() -> str:
    """The built module's name: a digest of the kernels' source, Python's extension ABI and
    numpy's version, so an edit or an upgrade never loads stale machine code."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(f"{sysconfig.get_config_var('EXT_SUFFIX')} numpy {np.__version__}".encode())
    return f"eplb_kernels_{digest.hexdigest()[:20]}"


def module_path(cache_dir: Path | None = None) -> Path:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return (cache_dir or kernel_cache()) / f"{module_name()}{suffix}"


_chosen: dict[str, Kernels] = {}  # "kernels": this process's, once chosen


def active() -> Kernels:
    """The kernels this process uses: chosen once, on first use."""
    if "kernels" not in _chosen:
        _chosen["kernels"] = ahead_of_time() or just_in_time()
    return _chosen["kernels"]


def ahead_of_time(cache_dir: Path | None = None) -> Kernels | None:
    """The built module's kernels, or None where none is built for this source."""
    path = module_path(cache_dir)
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(module_name(), path)
    if spec is None or spec.loader is None:
        return None
    try:
        module = importlib.util.module_from_spec(spec)  # dlopen: a damaged file fails here
        spec.loader.exec_module(module)
    except ImportError:  # a truncated or foreign file: numba's kernels serve instead
        return None
    return _kernels(module, "ahead-of-time")


@cache
def just_in_time() -> Kernels:
    """numba's dispatchers over ``compiled`` (imports numba)."""
    from eplb_operator.placement import compiled

    return _kernels(compiled, "just-in-time")


def _kernels(module: ModuleType, origin: str) -> Kernels:
    return Kernels(
        pack_batch=module.pack_batch,
        replicate_batch=module.replicate_batch,
        place_layers=module.place_layers,
        origin=origin,
    )


def use(chosen: Kernels) -> None:
    """Make ``chosen`` this process's kernels (``kernel_build`` after building)."""
    _chosen["kernels"] = chosen
