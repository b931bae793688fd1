"""Online: skewed load measured by a real Prometheus → rebalance → better balance, same outputs."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import XPL

from .conftest import World, assert_invariants, spec

pytestmark = pytest.mark.slow


def test_skewed_load_is_rebalanced_and_the_balance_improves_as_predicted(
    world_with_prometheus: World,
) -> None:
    world = world_with_prometheus
    assert world.prometheus is not None
    expected = world.group.probe()
    body = spec(
        online={"intervalSeconds": 10, "windowSeconds": 10, "minGainPermille": 20},
        metrics={"prometheusUrl": world.prometheus.url},
    )
    world.settle(12)  # a whole 10 s window of steady load before the first plan
    assert world.api.post(XPL, body).code == 201

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
    assert 'eplb_rollouts_total{namespace="default",placement="moe",result="completed"}' in metrics
    assert 'eplb_placement_balancedness{namespace="default",placement="moe",source="observed"}' in (
        metrics
    )
