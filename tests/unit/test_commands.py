"""The console scripts in an image without their extra: one line naming it, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def start(module: str, directory: Path) -> subprocess.CompletedProcess[str]:
    code = f"from eplb_core.commands import run; run({module!r}, 'plan', 'eplb')"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(directory), "PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip


def test_a_command_whose_extra_is_missing_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "needs_typer_alike.py").write_text("import not_installed_anywhere\napp = None\n")
    done = start("needs_typer_alike", tmp_path)
    assert done.returncode == 2, done
    assert done.stderr == (
        "eplb: needs not_installed_anywhere, from the 'plan' extra: pip install 'eplb-k8s[plan]'\n"
    )


def test_a_module_of_ours_missing_is_a_traceback_not_advice(tmp_path: Path) -> None:
    (tmp_path / "broken_install.py").write_text("import eplb_operator.no_such_module\napp = None\n")
    done = start("broken_install", tmp_path)
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr, done


def test_a_package_of_ours_left_out_of_the_image_is_one_line(tmp_path: Path) -> None:
    # The sidecar image has no eplb_operator: `eplb` there names what to install.  Here,
    # without site-packages (-S: no editable install), only eplb_core is on the path.
    done = subprocess.run(
        [sys.executable, "-S", "-c", "from eplb_core.commands import eplb; eplb()"],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(REPO / "core"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr == (
        "eplb: not in this image (it has no eplb_operator): pip install 'eplb-k8s[plan]'\n"
    )


def test_the_installed_scripts_run_their_apps(tmp_path: Path) -> None:
    for script, expected in (("eplb", "plan"), ("eplb-sidecar", "serve")):
        path = Path(sys.executable).parent / script
        done = subprocess.run([str(path), "--help"], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0 and expected in done.stdout, done
