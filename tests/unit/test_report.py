"""Reports: recordings, the Prometheus/API readers' pure parts, rollout messages, rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from eplb_core.errors import InvalidInputError
from eplb_local.demo.options import DemoOptions
from eplb_local.demo.watch import Counters
from eplb_operator.controller import messages
from eplb_operator.placement.views import rank_imbalance
from eplb_operator.report.prometheus_source import rollouts_from_objects, samples_from_matrix
from eplb_operator.report.recording import LoadSample, Recording, RolloutRecord
from eplb_operator.report.render import imbalance_series, render


def series(pod: str, layer: int, values: list[tuple[float, float]]) -> dict[str, object]:
    return {"metric": {"pod": pod, "layer": str(layer)},
            "values": [[t, str(v)] for t, v in values]}  # fmt: skip


def test_samples_put_pods_at_their_ranks_and_skip_incomplete_times() -> None:
    rank_of = {"a-0": 0, "a-1": 1, "b-0": 0, "b-1": 1}  # two EP groups
    result = [
        series("a-0", 0, [(10, 1), (20, 2)]), series("a-1", 0, [(10, 3), (20, 4)]),
        series("b-0", 0, [(10, 5), (20, 6)]), series("b-1", 0, [(10, 7)]),  # 20: b-1 missing
        series("a-0", 1, [(10, 1), (20, 1)]), series("a-1", 1, [(10, 1), (20, 1)]),
        series("gone", 1, [(10, 100)]),  # not a pod of the placement now
    ]  # fmt: skip
    samples = samples_from_matrix(result, rank_of, layers=2, ranks=2, step=10)
    # At 20 every (layer, rank) still has some pod's series: group b's rank 1 adds nothing.
    assert [s.time for s in samples] == [10.0, 20.0]
    assert samples[0].rank_load == [[6.0, 10.0], [1.0, 1.0]]
    assert samples[1].rank_load == [[8.0, 4.0], [1.0, 1.0]]
    lacking = [s for s in result if s["metric"]["layer"] == "0"]  # type: ignore[index]
    assert samples_from_matrix(lacking, rank_of, layers=2, ranks=2, step=10) == []
    with pytest.raises(InvalidInputError, match="layer 5"):
        samples_from_matrix([series("a-0", 5, [(1, 1)])], rank_of, layers=2, ranks=2, step=1)


def test_a_pod_of_two_ranks_splits_its_series_by_slot() -> None:
    """A pod hosting ranks 2 and 3 (2 slots each): its slot 5 is rank 2's, slot 6 rank 3's."""
    rank_of = {"p-0": 0, "p-1": 2}
    result = [
        {"metric": {"pod": pod, "layer": "0", "slot": str(slot)}, "values": [[10, str(value)]]}
        for pod, slot, value in (("p-0", 0, 1), ("p-0", 3, 2), ("p-1", 5, 3), ("p-1", 6, 4))
    ]
    samples = samples_from_matrix(result, rank_of, layers=1, ranks=4, step=10, slots_per_rank=2)
    assert samples[0].rank_load == [[1.0, 2.0, 3.0, 4.0]]


def event(reason: str, message: str, when: str) -> dict[str, object]:
    return {"reason": reason, "message": message, "eventTime": when}


def test_rollouts_come_from_the_events_and_revisions() -> None:
    revisions = [{"metadata": {"name": f"p-{n}"}, "data": {"moves": 10 * n}} for n in (1, 2, 3, 4)]
    events = [
        event("RolloutStarted", messages.rollout_started("p-1", "online"), "2026-01-01T00:00:01Z"),
        event("RolloutComplete", messages.rollout_complete("p-1", 8, 12, 0.4),
              "2026-01-01T00:00:02Z"),
        event("RolloutStarted", messages.rollout_started("p-2", "online"), "2026-01-01T00:01:00Z"),
        event("RolloutAborted", messages.rollout_aborted("p-2", "BarrierTimeout", "layers [0]"),
              "2026-01-01T00:01:05Z"),
        event("RolloutStarted", messages.rollout_started("p-3", "online"), "2026-01-01T00:02:00Z"),
        event("RolloutStarted", messages.rollout_started("p-4", "online"), "2026-01-01T00:03:00Z"),
    ]  # fmt: skip
    records = rollouts_from_objects(revisions, events[::-1], {"targetRevision": "p-4"})
    assert [(r.revision, r.result) for r in records] == [
        ("p-1", "completed"), ("p-2", "aborted"), ("p-3", "aborted"), ("p-4", "in-progress"),
    ]  # fmt: skip
    assert (records[0].layers, records[0].moves, records[0].seconds) == (8, 12, 1.0)
    assert records[1].reason == "BarrierTimeout" and records[2].reason == "Interrupted"
    assert records[3].moves == 40  # planned, from the revision


def test_rollout_messages_round_trip() -> None:
    text = messages.rollout_complete("deepseek-v3-12", 58, 1500, 3.14)
    figures = messages.parse_rollout_complete(text)
    assert figures == messages.RolloutFigures("deepseek-v3-12", 58, 1500, 3.1)
    assert messages.revision_of(text) == "deepseek-v3-12"
    assert messages.parse_rollout_complete("something else") is None


def recording(rollouts: list[RolloutRecord]) -> Recording:
    """Ranks 0 hot for samples at t = 1…10, balanced at t = 11…20."""
    samples = [LoadSample(time=t, seconds=1.0,
                          rank_load=[[30.0, 10.0], [20.0, 20.0]] if t <= 10 else [[20, 20]] * 2)
               for t in range(1, 21)]  # fmt: skip
    return Recording(title="t", layers=2, ranks=2, samples=samples, rollouts=rollouts)


def test_before_and_after_windows_bracket_the_rollouts() -> None:
    done = RolloutRecord(revision="p-1", result="completed", started=10.2, finished=10.6)
    windows = recording([done]).before_and_after()
    assert windows is not None
    before, after = windows
    assert before.tolist() == [[300.0, 100.0], [200.0, 200.0]]
    assert after.tolist() == [[200.0, 200.0]] * 2
    assert rank_imbalance(before).tolist() == [1.5, 1.0]
    aborted = RolloutRecord(revision="p-1", result="aborted", started=10.2, finished=10.6)
    assert recording([aborted]).before_and_after() is None  # nothing changed the load


def test_a_recording_round_trips_and_bad_ones_are_refused(tmp_path: Path) -> None:
    original = recording([RolloutRecord(revision="p-1", result="completed", started=10.2,
                                        finished=10.6, moves=3, layers=1)])  # fmt: skip
    assert Recording.load(original.save(tmp_path)) == original
    assert Recording.load(tmp_path) == original  # a demo's directory
    bad = original.model_copy(update={"ranks": 3})
    bad.save(tmp_path / "bad")
    with pytest.raises(InvalidInputError, match=r"is not \[2\]\[3\]"):
        Recording.load(tmp_path / "bad")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not a recording"):
        Recording.load(tmp_path / "junk.json")
    with pytest.raises(InvalidInputError, match="no recording"):
        Recording.load(tmp_path / "missing")


def test_render_draws_what_the_recording_holds(tmp_path: Path) -> None:
    rollouts = [
        RolloutRecord(revision="p-1", result="aborted", reason="BarrierTimeout", started=5,
                      finished=6),
        RolloutRecord(revision="p-2", result="completed", started=10.2, finished=10.6, moves=3,
                      layers=1, batches=1),
    ]  # fmt: skip
    files = render(recording(rollouts), tmp_path)
    assert [p.name for p in files.images] == ["rank-load.png", "imbalance.png", "moves.png"]
    page = files.html.read_text()
    assert "<td>BarrierTimeout</td>" in page and "<td>p-2</td>" in page
    assert "<b>1.250</b> before" in page and "<b>1.000</b> after" in page
    times, values = imbalance_series(recording(rollouts), smooth_seconds=0.5)
    assert values.shape == (20, 2)
    assert values[0].tolist() == [1.5, 1.0] and values[-1].tolist() == [1.0, 1.0]
    assert times[0] == 1.0
    with pytest.raises(InvalidInputError, match="no load samples"):
        render(Recording(title="empty", layers=1, ranks=2), tmp_path / "empty")


def test_operator_counters_survive_a_restart() -> None:
    counters = Counters()
    assert [counters.delta("x", v) for v in (2.0, 5.0, 5.0, 1.0, 4.0)] == [2, 3, 0, 1, 3]


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"pods": 1}, "--pods must be"), ({"experts": 16, "redundant": 3}, "multiple of the ranks"),
     ({"ranks_per_pod": 2}, "--pods x --ranks-per-pod"), ({"ranks_per_pod": 9}, "1..8"),
     ({"duration": 9}, "--duration"), ({"layers": 0}, "--layers"),
     ({"redundant": -1}, "0 or more")],
)  # fmt: skip
def test_demo_options_refuse_what_cannot_run(changes: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        DemoOptions(**changes)  # type: ignore[arg-type]


def test_demo_options_derive_the_model_and_timing() -> None:
    options = DemoOptions(pods=4, experts=16, redundant=4, duration=15)
    config = options.engine_config()
    assert (config.ranks, config.slots_per_rank, config.experts) == (4, 5, 16)
    assert (options.window_seconds, options.interval_seconds) == (15, 30)
