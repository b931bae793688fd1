"""kopf runs a full lifecycle against the local cluster: create, update, status, delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest
from kopf.testing import KopfRunner

from eplb_local.kube.api import Api
from eplb_local.world import LocalKube
from tests.cluster.conftest import eventually, placement, xpl_path

PROBE = Path(__file__).with_name("kopf_probe.py")


@pytest.fixture
def own_registry() -> Iterator[kopf.OperatorRegistry]:
    """A registry of the probe's own: the default one holds eplb_operator's handlers whenever
    an earlier test imported them, and those would reconcile the probe's placement too.
    kopf makes a given registry the default: the previous one is put back afterwards, or a
    later test's operator (tests/cluster/test_operator_pods.py) would run the probe."""
    previous = kopf.get_default_registry()
    yield kopf.OperatorRegistry()
    kopf.set_default_registry(previous)


def test_kopf_full_lifecycle(
    kube: LocalKube,
    api: Api,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    own_registry: kopf.OperatorRegistry,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    XPL = xpl_path(namespace)
    args = ["run", "--standalone", "--namespace", namespace, "--verbose", str(PROBE)]
    with KopfRunner(args, timeout=60, registry=own_registry) as runner:
        assert api.post(XPL, placement()).code == 201
        eventually(lambda: api.get(f"{XPL}/ds").body.get("status", {}).get("phase") == "Created")
        assert api.get(f"{XPL}/ds").body["metadata"].get("finalizers")  # kopf's own finalizer
        api.merge(f"{XPL}/ds", {"spec": {"rollout": {"layersPerStep": 2}}})
        eventually(lambda: api.get(f"{XPL}/ds").body.get("status", {}).get("phase") == "Updated-2")
        api.delete(f"{XPL}/ds")
        eventually(lambda: api.get(f"{XPL}/ds").code == 404)
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0
    assert "probe saw the deletion" in runner.output
    assert "Traceback" not in runner.output
