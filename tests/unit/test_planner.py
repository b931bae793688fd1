import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_core.errors import InvalidInputError
from eplb_operator.placement import LayerReason, PlanOptions, Topology, plan, rebalance, views
from eplb_operator.placement.alignment import align_to_previous
from eplb_operator.workloads import drift, zipf_load

DSV3 = Topology.from_redundant(256, 32, 32, num_nodes=4, num_groups=8)
QWEN3 = Topology.from_redundant(128, 16, 16)


def test_without_previous_every_layer_gets_the_fresh_placement() -> None:
    load = zipf_load(4, 128, seed=1)
    result = plan(load, QWEN3)
    assert torch.equal(result.placement, rebalance(load, QWEN3))
    assert {layer.reason for layer in result.layers} == {LayerReason.INITIAL}
    assert result.imbalance_after < result.imbalance_before


@pytest.mark.parametrize("topology", [DSV3, QWEN3], ids=["dsv3-hierarchical", "qwen3-global"])
def test_unchanged_load_moves_nothing(topology: Topology) -> None:
    load = zipf_load(6, topology.num_experts, seed=2)
    previous = rebalance(load, topology)
    result = plan(load, topology, previous=previous)
    assert result.moves == 0
    assert torch.equal(result.placement, previous)
    assert {layer.reason for layer in result.layers} == {LayerReason.ALREADY_BALANCED}


@pytest.mark.parametrize("topology", [DSV3, QWEN3], ids=["dsv3-hierarchical", "qwen3-global"])
def test_small_drift_moves_few_slots_and_stays_balanced(topology: Topology) -> None:
    base = zipf_load(8, topology.num_experts, seed=3)
    previous = rebalance(base, topology)
    drifted = drift(base, 0.05, seed=4)
    options = PlanOptions(slack=0.01)
    result = plan(drifted, topology, previous=previous, options=options)
    fresh = views.imbalance(drifted, rebalance(drifted, topology), topology.num_ranks)
    after = views.imbalance(drifted, result.placement, topology.num_ranks)
    # Never worse than fresh + slack on any layer; a small fraction of all slots changes.
    assert (after <= fresh + options.slack + 1e-9).all()
    assert result.moves <= 0.15 * result.placement.numel()
    assert result.moves == int(views.moves(previous, result.placement).sum())
    views.validate_placement(result.placement, topology)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**16), st.sampled_from([0.05, 0.3, 1.0]))
def test_move_budget_is_never_exceeded(max_moves: int, seed: int, sigma: float) -> None:
    topology = Topology.from_redundant(64, 8, 8, num_nodes=2, num_groups=4)
    base = zipf_load(5, 64, seed=seed)
    previous = rebalance(base, topology)
    load = drift(base, sigma, seed=seed + 1)
    result = plan(load, topology, previous=previous, options=PlanOptions(max_moves=max_moves))
    assert result.moves <= max_moves
    assert int(views.moves(previous, result.placement).sum()) == result.moves
    views.validate_placement(result.placement, topology)
    # A layer the budget left alone is exactly as it was.
    for layer in result.layers:
        if not layer.updated:
            assert torch.equal(result.placement[layer.layer], previous[layer.layer])
        assert layer.imbalance_after <= layer.imbalance_before + 1e-12


def test_budget_goes_to_the_worst_layers_first() -> None:
    topology = QWEN3
    base = zipf_load(4, 128, seed=5)
    previous = rebalance(base, topology)
    load = base.clone()
    load[2] = drift(base[2:3], 1.0, seed=6)[0]  # only layer 2 changes a lot
    unlimited = plan(load, topology, previous=previous)
    needed = unlimited.layers[2].moves
    assert needed > 0
    tight = plan(load, topology, previous=previous, options=PlanOptions(max_moves=needed))
    assert tight.layers[2].reason == LayerReason.UPDATED and tight.moves == needed


def test_gate_skips_layers_whose_load_did_not_change() -> None:
    base = zipf_load(3, 128, seed=7)
    previous = rebalance(base, QWEN3)
    load = base.clone()
    load[1] = drift(base[1:2], 1.0, seed=8)[0]
    result = plan(
        load * 3,
        QWEN3,
        previous=previous,
        reference_load=base,
        options=PlanOptions(similarity_threshold=0.999),
    )
    reasons = [layer.reason for layer in result.layers]
    assert reasons[0] == reasons[2] == LayerReason.LOAD_UNCHANGED  # same shape, 3x the tokens
    assert reasons[1] == LayerReason.UPDATED
    assert result.layers[0].similarity == pytest.approx(1.0)
    assert result.layers[1].similarity is not None and result.layers[1].similarity < 0.999


def test_min_gain_keeps_layers_with_too_little_to_win() -> None:
    base = zipf_load(3, 128, seed=9)
    previous = rebalance(base, QWEN3)
    load = drift(base, 0.3, seed=10)
    baseline = plan(load, QWEN3, previous=previous)
    gains = [layer.imbalance_before - layer.imbalance_after for layer in baseline.layers]
    threshold = sorted(gains)[1] + 1e-9  # exclude the two smallest gains
    gated = plan(load, QWEN3, previous=previous, options=PlanOptions(min_gain=threshold))
    skipped = [layer for layer in gated.layers if layer.reason == LayerReason.GAIN_TOO_SMALL]
    assert len(skipped) == 2
    for layer in skipped:
        assert torch.equal(gated.placement[layer.layer], previous[layer.layer])


def test_hierarchical_plans_keep_groups_on_one_node() -> None:
    base = zipf_load(4, 256, seed=11)
    previous = rebalance(base, DSV3)
    result = plan(drift(base, 0.2, seed=12), DSV3, previous=previous)
    group_of_slot = result.placement // 32
    node_of_slot = torch.arange(288) // 72
    for layer in range(4):
        for group in range(8):
            assert node_of_slot[group_of_slot[layer] == group].unique().numel() == 1


def test_alignment_undoes_a_rank_permutation() -> None:
    load = zipf_load(3, 128, seed=13)
    placement = rebalance(load, QWEN3).numpy()
    shuffled = placement.reshape(3, 16, 9)[:, np.random.default_rng(0).permutation(16)]
    shuffled = shuffled[:, :, ::-1].reshape(3, -1)  # and reverse every rank's slots
    aligned = align_to_previous(shuffled, placement, QWEN3)
    assert (aligned == placement).all()


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        (torch.zeros(2, 144, dtype=torch.int64), "has no replica"),
        (torch.zeros(2, 100, dtype=torch.int64), "100 slots per layer"),
    ],
)
def test_bad_previous_is_rejected(previous: torch.Tensor, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        plan(zipf_load(2, 128), QWEN3, previous=previous)


def test_previous_with_other_layer_count_is_rejected() -> None:
    previous = rebalance(zipf_load(3, 128), QWEN3)
    with pytest.raises(InvalidInputError, match="3 layers, load has 2"):
        plan(zipf_load(2, 128), QWEN3, previous=previous)
