"""``python -m eplb_sidecar`` is ``eplb-sidecar``."""

from eplb_sidecar.cli import app

app()
