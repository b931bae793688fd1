"""What every benchmark report shares: Markdown tables and a line naming the machine."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> str:
    """CPU, threads, GPU when there is one, Python and torch versions."""
    gpu = ""
    if torch.cuda.is_available():
        gpu = f"; GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return (
        f"{platform.machine()} {cpu_name()}, {torch.get_num_threads()} torch threads{gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
