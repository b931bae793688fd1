"""``eplb-sidecar engine`` (``--implementation reference``, the default): publish, serve.

Registered as the ``reference`` entry point of the ``eplb.engines`` group (pyproject.toml),
so the sidecar's command runs it where the local tooling is installed without importing it.
"""

from __future__ import annotations

from pathlib import Path

from eplb_local.engine.reference import ReferenceEngine
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.runtime import serve_engine


def run_reference_engine(
    config: EngineConfig, table_dir: Path, bind: str, port: int, ports_file: Path | None = None
) -> None:
    """Publish the table, then serve batches (and the engine API) until SIGTERM."""
    serve_engine(ReferenceEngine(config, table_dir), bind, port, ports_file)
