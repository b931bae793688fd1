"""How the suite is split between pytest-xdist workers (``scripts/test.sh`` runs two).

A unit of work is a test file, as with ``--dist loadfile``, except that the files sharing
tests/operator's package-scoped world (``package_world``) form one unit: split over two
workers, that world (a cluster's operator and four serving pods, about a minute to start)
would be built once per worker and once more each time a worker came back to the package.

Units are handed out in collection order, two to each worker at first and then one
whenever a worker is nearly idle, so the longest units are collected first
(:func:`pytest_collection_modifyitems`): a long unit started last would keep one worker
busy while the other idles.  Handed out two each, the first, third, … unit go to one
worker and the second, fourth, … to the other (``FIRST_UNITS`` relies on it).
"""

from __future__ import annotations

from typing import Any

import pytest

# The longest single test (the demo command in a fresh checkout, about six minutes).
README_TEST = "tests/test_readme.py"
# The CI soak: 12 rebalances with six components killed (several minutes on a loaded machine).
SOAK_TEST = "tests/soak/test_soak.py"
# The files whose tests take tests/operator's ``reused_world``: one unit of work.
PACKAGE_WORLD_FILES = frozenset(
    f"tests/operator/{name}.py"
    for name in (
        "test_api_server",
        "test_deletion",
        "test_faults",
        "test_faults_more",
        "test_incarnations",
        "test_offline",
        "test_sidecar_auth",
        "test_transfer_ports",
    )
)
PACKAGE_WORLD_UNIT = "tests/operator (package_world)"


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to."""
    path = nodeid.split("::", 1)[0]
    return PACKAGE_WORLD_UNIT if path in PACKAGE_WORLD_FILES else path


# The three longest units, started first in this order: the README test and the soak (the
# heaviest two) both go to the first worker, one after the other, rather than side by side,
# where each slows the other (the soak took 462 s of its 8-minute cap beside the README
# test); the package world goes to the second worker.
FIRST_UNITS = (README_TEST, PACKAGE_WORLD_UNIT, SOAK_TEST)


def start_order(nodeid: str) -> int:
    """The units to start first by their place in ``FIRST_UNITS``, then every other; the
    sort is stable, so files keep their order."""
    unit = unit_of(nodeid)
    return FIRST_UNITS.index(unit) if unit in FIRST_UNITS else len(FIRST_UNITS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The scheduler sees test ids only, so the files are listed above; a new file taking the
    # package's world must be listed too, or that world would be started once more.
    unlisted = {
        item.nodeid.split("::", 1)[0] for item in items if "package_world" in item.fixturenames
    } - PACKAGE_WORLD_FILES
    if unlisted:
        raise pytest.UsageError(
            f"add {', '.join(sorted(unlisted))} to PACKAGE_WORLD_FILES in tests/scheduling.py"
        )
    items.sort(key=lambda item: start_order(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    # Keep the collection order: xdist would otherwise order the units by their test count.
    config.option.loadscopereorder = False
    return Units(config, log)
