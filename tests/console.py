"""The installed console scripts, run as users run them: in a subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def eplb_command() -> list[str]:
    script = Path(sys.executable).parent / "eplb"
    return [str(script)] if script.exists() else [shutil.which("eplb") or "eplb"]


def eplb(
    *args: str | Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*eplb_command(), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip
