"""``eplb-sidecar engine --implementation transformers``: build, publish, serve."""

from __future__ import annotations

import logging
from pathlib import Path

from eplb_sidecar.adapters.transformers.engine import TransformersEngine
from eplb_sidecar.adapters.transformers.options import TransformersOptions
from eplb_sidecar.engine.config import EngineConfig
from eplb_sidecar.runtime import serve_engine

log = logging.getLogger("eplb_sidecar.adapters.transformers")


def run_transformers_engine(
    config: EngineConfig,
    options: TransformersOptions,
    table_dir: Path,
    bind: str,
    port: int,
    ports_file: Path | None = None,
) -> None:
    """Publish the table, join the group, then serve rounds and the engine API until SIGTERM."""
    engine = TransformersEngine(config, options, table_dir)
    log.info("serving %s, rank %d of %d", options.architecture, config.rank, config.ranks)
    serve_engine(engine, bind, port, ports_file)
