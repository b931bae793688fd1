"""Between batches a rollout reads each pod's revisions only, and carries the placement it
read before forward (controller/rollout.py: carried_forward), unless the revisions show a
change the batch does not explain."""

from __future__ import annotations

from eplb_operator.controller.rollout import carried_forward
from eplb_sidecar.api import Info

BEFORE = [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2]]  # [L, P] served before the batch
TARGET = [[0, 1, 2, 1], [2, 1, 0, 2], [1, 2, 0, 0]]
REVISION = 7


def info(revisions: list[int], placement: list[list[int]] | None, incarnation: str = "a") -> Info:
    return Info(pod="p", group="0", rank=0, ranks=2, layers=3, experts=3, slots_per_rank=2,
                device="cpu", expert_bytes=8, revisions=revisions, staged=[],
                placement=placement, checkpoint=False, incarnation=incarnation)  # fmt: skip


def test_the_batch_layers_now_at_the_rollouts_revision_take_the_target_rows() -> None:
    before = info([3, 3, 5], BEFORE)
    carried = carried_forward(before, info([7, 7, 5], None), [0, 1], REVISION, TARGET)
    assert carried is not None
    assert carried.placement == [TARGET[0], TARGET[1], BEFORE[2]]
    assert carried.revisions == [7, 7, 5]


def test_a_batch_layer_the_pod_did_not_commit_keeps_its_row() -> None:
    """Its commit failed and it was dropped, or it already served the target."""
    carried = carried_forward(info([3, 3, 5], BEFORE), info([7, 3, 5], None), [0, 1],
                              REVISION, TARGET)  # fmt: skip
    assert carried is not None and carried.placement == [TARGET[0], BEFORE[1], BEFORE[2]]


def test_anything_the_batch_does_not_explain_is_read_again() -> None:
    before = info([3, 3, 5], BEFORE)
    # A layer outside the batch changed (another writer, or a re-sync).
    assert carried_forward(before, info([7, 3, 6], None), [0], REVISION, TARGET) is None
    # A batch layer at another revision than this rollout's.
    assert carried_forward(before, info([8, 3, 5], None), [0], REVISION, TARGET) is None
    # The sidecar started again: what it serves says nothing about what it served.
    restarted = info([3, 3, 5], None, incarnation="b")
    assert carried_forward(before, restarted, [0], REVISION, TARGET) is None
    # A sidecar that names no incarnation (an older one), or nothing read before.
    assert carried_forward(before, info([3, 3, 5], None, ""), [0], REVISION, TARGET) is None
    assert carried_forward(info([3, 3, 5], None), info([3, 3, 5], None), [0], REVISION,
                           TARGET) is None  # fmt: skip
