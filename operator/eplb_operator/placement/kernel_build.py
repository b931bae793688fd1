"""Build the placement kernels ahead of time (``numba.pycc``) into the kernel cache: what
``eplb plan`` does on its first run (``placement.kernels`` says why and where).  Only the
command-line tool builds, so only its extra needs setuptools, which pycc drives the C compiler
with.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eplb_operator.placement.kernels import (
    SIGNATURES,
    Kernels,
    ahead_of_time,
    kernel_cache,
    module_name,
    module_path,
    use,
)


class BuildError(Exception):
    """The module could not be built here (the reason is the message)."""


def build(cache_dir: Path | None = None) -> Kernels:
    """Build the module into the kernel cache unless it is there, make it this process's
    kernels, and return them.  Raises :class:`BuildError` with the reason where it cannot be
    built; the process then keeps numba's kernels.

    Processes building at once take turns on a lock, and the module appears under its name
    only when complete, so no process ever loads a half-written file.
    """
    cache_dir = cache_dir or kernel_cache()
    built = ahead_of_time(cache_dir)  # the usual case: no lock, so a read-only cache serves
    if built is not None:
        use(built)
        return built
    try:
        import fcntl
    except ImportError as error:  # Windows: numba's kernels
        raise BuildError("no POSIX file locks on this platform") from error
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(cache_dir / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            built = ahead_of_time(cache_dir)  # another process may have built it meanwhile
            if built is None:
                _compile_into(cache_dir)
                built = ahead_of_time(cache_dir)
    except OSError as error:
        raise BuildError(f"{cache_dir}: {error.strerror or error}") from error
    if built is None:
        raise BuildError(f"{module_path(cache_dir)} was built but does not import")
    use(built)
    return built


def _compile_into(cache_dir: Path) -> None:
    """Compile ``compiled``'s entry points with ``numba.pycc`` into ``cache_dir``: in a scratch
    directory of its own, then renamed into place."""
    name = module_name()
    try:
        with warnings.catch_warnings():
            # pycc is marked pending deprecation with no replacement yet; where a numba drops
            # it, the ImportError below leaves numba's just-in-time kernels in use.
            warnings.simplefilter("ignore")
            import setuptools  # type: ignore[import-untyped]  # noqa: F401  # pycc needs it

            pycc: Any = importlib.import_module("numba.pycc")
    except ImportError as error:
        raise BuildError(f"this numba cannot compile ahead of time ({error})") from error
    from eplb_operator.placement import compiled

    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as scratch:
        compiler = pycc.CC(name)
        compiler.output_dir = scratch
        compiler.verbose = False
        for entry, signature in SIGNATURES.items():
            compiler.export(entry, signature)(getattr(compiled, entry).py_func)
        try:
            with _quiet():
                compiler.compile()
        except Exception as error:  # the C compiler or linker failed, or is missing
            raise BuildError(f"the C compiler failed: {_first_line(error)}") from error
        built = Path(scratch) / module_path(cache_dir).name
        if not built.is_file():
            raise BuildError(f"numba.pycc wrote no {built.name}")
        os.replace(built, module_path(cache_dir))
    for stale in cache_dir.glob("eplb_kernels_*"):  # earlier sources' modules
        if stale.name != module_path(cache_dir).name:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The C compiler's own output (file names, warnings) kept off the user's terminal: at
    the file descriptors, since the compiler is a child process."""
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
