"""Each image installs only what it imports: the base dependencies and one extra of
pyproject.toml hold exactly the third-party packages its entry point can import (at module
level or inside a function, as grimp reads them), and each Dockerfile installs its own extra
and no local tooling."""

from __future__ import annotations

import re
from functools import cache
from importlib.metadata import packages_distributions

import grimp
import pytest
import tomllib

from tests.conftest import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# What each role runs.  The local tooling (`eplb demo`, `eplb cluster`, the World of the
# tests) starts the operator, sidecars and the `eplb` command as processes.
# kopf run --module=…, and the chart's pre-delete hook (python -m …stand_down)
OPERATOR = ["eplb_operator.controller.handlers", "eplb_operator.controller.stand_down"]
SIDECAR = ["eplb_sidecar.cli"]  # eplb-sidecar
PLAN = ["eplb_operator.cli.main"]  # eplb plan, eplb report
# The last two the sidecar loads as entry points where the local tooling is installed.
LOCAL = [
    "eplb_local.cli.demo",
    "eplb_local.cli.cluster",
    "eplb_local.world",
    "eplb_local.faults",
    "eplb_local.engine.main",
]
ENTRY_POINTS = {
    "operator": OPERATOR,
    "sidecar": SIDECAR,
    "plan": PLAN,
    "demo": LOCAL + OPERATOR + SIDECAR + PLAN,
}
# An extra of its own that no role needs: the sidecar's engine adapter for real models loads
# transformers only when it is asked for.
OPTIONAL = {"transformers"}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def requirements(extra: str | None) -> set[str]:
    """Distribution names (normalized) that ``pip install '.[extra]'`` asks for, our own
    extras expanded; ``None``: the base dependencies."""
    wanted = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    names: set[str] = set()
    for requirement in wanted:
        own = re.fullmatch(r"eplb-k8s\[(.+)\]", requirement)
        if own is None:
            names.add(_name(requirement))
        else:
            for inner in own.group(1).split(","):
                names |= requirements(inner.strip())
    return names


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(
        "eplb_core", "eplb_operator", "eplb_sidecar", "eplb_local", include_external_packages=True
    )


def imported_distributions(modules: list[str]) -> set[str]:
    """Third-party distributions (normalized names) that ``modules`` can import."""
    owners = packages_distributions()
    found: set[str] = set()
    for module in modules:
        reached = graph().find_upstream_modules(module) | {module}
        for top in {name.split(".")[0] for name in reached}:
            if top.startswith("eplb_") or top not in owners:
                continue  # ours, or the standard library
            found |= {_name(dist) for dist in owners[top]}
    return found


@pytest.mark.parametrize("role", sorted(ENTRY_POINTS))
def test_each_extra_holds_what_its_entry_point_imports(role: str) -> None:
    installed = requirements(None) | requirements(role)
    imported = imported_distributions(ENTRY_POINTS[role])
    optional = {_name(name) for name in OPTIONAL}
    assert imported - optional <= installed, f"{role} imports, uninstalled: {imported - installed}"
    assert installed <= imported, f"the {role} extra installs, unimported: {installed - imported}"


def test_images_install_their_extra_and_no_local_tooling() -> None:
    for role in ("operator", "sidecar"):
        text = (REPO / "docker" / f"{role}.Dockerfile").read_text()
        assert re.findall(r'pip install "?\.(\[\w+\])?"?$', text, re.MULTILINE) == [f"[{role}]"]
        assert not re.search(r"^COPY local", text, re.MULTILINE)
    sidecar = (REPO / "docker" / "sidecar.Dockerfile").read_text()
    assert re.findall(r"^COPY (\w+)/", sidecar, re.MULTILINE) == ["core", "sidecar"]


def test_the_dev_extra_holds_every_role() -> None:
    """scripts/setup.sh installs `.[dev]`: the tests run with every role's dependencies."""
    dev = requirements("dev")
    for role in (*ENTRY_POINTS, "transformers"):
        assert requirements(role) <= dev, role
