"""Online: skewed load measured by a real Prometheus → rebalance → better balance, same outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eplb_local.world import World
from eplb_operator.placement.views import rank_imbalance
from eplb_operator.report.prometheus_source import recording_from_cluster
from tests.console import eplb

from .conftest import CONFIG, assert_invariants, spec

pytestmark = pytest.mark.slow


def test_skewed_load_is_rebalanced_and_the_balance_improves_as_predicted(
    world_with_prometheus: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = world_with_prometheus
    assert world.prometheus is not None
    expected = world.probe()
    body = spec(
        online={"intervalSeconds": 10, "windowSeconds": 10, "minGainPermille": 20},
        metrics={"prometheusUrl": world.prometheus.url},
    )
    world.settle(12)  # a whole 10 s window of steady load before the first plan
    world.kube.api_checked().checked("POST", world.xpl, body)

    world.wait(lambda: world.status().get("currentRevision") == "moe-1", 90, "first rebalance")
    status = world.status()
    before = status["balancedness"]  # observed over the window before the rollout
    predicted = status["lastRebalance"]["predictedBalancedness"]
    assert status["lastRebalance"]["moves"] > 0
    assert predicted > before + 0.05, (before, predicted)
    assert world.condition("Ready")["status"] == "True"
    assert world.condition("Progressing")["reason"] == "RolloutComplete"
    assert world.condition("Ready")["observedGeneration"] == 1
    assert_invariants(world, expected)
    revision = world.revisions()[0]
    assert revision["metadata"]["ownerReferences"][0]["name"] == "moe"
    assert revision["revision"] == 1

    # Passes come every intervalSeconds; the second one after the rollout measures a window
    # that lies wholly after it.
    seen = [before]
    for _ in range(2):
        world.wait(lambda: world.status().get("balancedness") != seen[-1], 60, "a new observation")
        seen.append(world.status()["balancedness"])
    after = seen[-1]
    assert world.status()["currentRevision"] == "moe-1"  # the same load: nothing to change
    assert after > before + 0.05, (before, after)
    assert abs(after - predicted) < 0.05, (seen, predicted)
    reasons = {event.get("reason") for event in world.events()}
    assert "RolloutComplete" in reasons
    metrics = world.operator_metrics()
    ns = world.namespace
    assert f'eplb_rollouts_total{{namespace="{ns}",placement="moe",result="completed"}}' in metrics
    assert f'eplb_placement_balancedness{{namespace="{ns}",placement="moe",source="observed"}}' in (
        metrics
    )

    # `eplb report` on this cluster: load from Prometheus, rollouts from the API.
    env = dict(os.environ, KUBECONFIG=str(world.kube.kubeconfig))
    flags = ["--placement", f"{ns}/moe", "--since", "120", "--step", "2"]
    result = eplb(
        "report", "--prometheus", world.prometheus.url, *flags, "--output", tmp_path / "report",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("report.html", "rank-load.png", "imbalance.png", "moves.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    monkeypatch.setenv("KUBECONFIG", str(world.kube.kubeconfig))
    recording = recording_from_cluster(world.prometheus.url, ns, "moe", 120, 2)
    assert (recording.layers, recording.ranks) == (CONFIG.layers, CONFIG.ranks)
    (rollout,) = recording.rollouts
    assert (rollout.revision, rollout.result) == ("moe-1", "completed")
    assert rollout.moves == status["lastRebalance"]["moves"]
    assert rollout.layers == status["lastRebalance"]["layersUpdated"]
    windows = recording.before_and_after()
    assert windows is not None
    reported_before, reported_after = (float(rank_imbalance(w).mean()) for w in windows)
    assert reported_after < reported_before - 0.05, (reported_before, reported_after)
    missing = eplb("report", "--prometheus", world.prometheus.url, "--placement", f"{ns}/nope",
                   env=env)  # fmt: skip
    assert missing.returncode == 2 and f"ExpertPlacement {ns}/nope not found" in missing.stderr
