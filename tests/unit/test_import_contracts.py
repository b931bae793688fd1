"""The layers of DESIGN.md §3 as import-linter contracts (.importlinter), run here as in
scripts/test.sh: the sidecar never imports the operator, nothing in production imports the
local tooling, the shared core imports neither side, placement and formats stay pure, and
the operator's packages keep their order."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CONFIG = REPO / ".importlinter"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          check=False)  # fmt: skip


def test_every_contract_is_kept() -> None:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    contracts = [s for s in parser.sections() if s.startswith("importlinter:contract:")]
    assert {c.split(":")[-1] for c in contracts} == {
        "sidecar-apart",
        "no-local-tooling",
        "core-apart",
        "pure-policy",
        "operator-layers",
    }
    done = lint_imports(CONFIG)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" KEPT") == len(contracts), done.stdout


def test_a_broken_layer_is_reported(tmp_path: Path) -> None:
    """The runner sees real imports: the controller does import placement, so a contract
    that forbids it fails, naming the import."""
    config = tmp_path / "broken.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    eplb_operator\n\n"
        "[importlinter:contract:upside-down]\nname = upside down\ntype = layers\n"
        "containers =\n    eplb_operator\nlayers =\n    placement\n    controller\n"
    )
    done = lint_imports(config)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "eplb_operator.controller." in done.stdout
