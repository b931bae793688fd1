"""Where ``eplb`` keeps what it can rebuild: ``$XDG_CACHE_HOME/eplb``, else ``~/.cache/eplb``.

Nothing there is needed for correctness; each user of it rebuilds what is missing or stale.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eplb"
