"""The console scripts, started in any image: a command whose extra is not installed says
which one in a line (exit 2) instead of a traceback.

The operator image installs the ``operator`` extra only, yet ``eplb`` and ``eplb-sidecar``
are on its PATH (every install gets the scripts); each needs typer, which that image leaves
out.  The sidecar image has no ``eplb_operator`` at all, which ``eplb`` needs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

OURS = ("eplb_core", "eplb_operator", "eplb_sidecar", "eplb_local")


def run(module: str, extra: str, prog: str) -> None:
    """Run ``module``'s typer ``app`` as ``prog``; a third-party import it lacks is one line
    naming the extra that brings it, and exit 2."""
    try:
        app: Callable[[], None] = importlib.import_module(module).app
    except ModuleNotFoundError as missing:
        if missing.name in OURS:  # a whole package of ours left out of this image
            sys.stderr.write(f"{prog}: not in this image (it has no {missing.name}): "
                             f"pip install 'eplb-k8s[{extra}]'\n")  # fmt: skip
            raise SystemExit(2) from None
        if (missing.name or "").split(".")[0] in OURS:
            raise  # a broken install of ours: the traceback is the report
        sys.stderr.write(f"{prog}: needs {missing.name}, from the '{extra}' extra: "
                         f"pip install 'eplb-k8s[{extra}]'\n")  # fmt: skip
        raise SystemExit(2) from None
    app()


def eplb() -> None:
    run("eplb_operator.cli.main", "plan", "eplb")


def eplb_sidecar() -> None:
    run("eplb_sidecar.cli", "sidecar", "eplb-sidecar")
