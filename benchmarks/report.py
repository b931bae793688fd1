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


PREVIOUS_MARKER = "<!-- previous figures: kept across runs, edit by hand -->"


def previous_section(path: Path) -> str:
    """The figures of an earlier version, for comparison: the section after
    ``PREVIOUS_MARKER`` of ``path``; on the first run, all of ``path``'s tables."""
    if not path.exists():
        return ""
    text = path.read_text()
    if PREVIOUS_MARKER in text:
        return text[text.index(PREVIOUS_MARKER) :].rstrip() + "\n"
    body = text.split("\n", 1)[1].replace("\n## ", "\n### ")
    return f"{PREVIOUS_MARKER}\n## Previous figures (before this run's version)\n{body}"
