"""Which transfer session a group's prepares name (operator/controller/sessions.py)."""

from __future__ import annotations

from eplb_operator.controller.sessions import Members, TransferSessions


def members(*incarnations: str, timeout: float = 30.0) -> Members:
    """A group of one pod per incarnation, at fixed addresses."""
    return (
        tuple(
            (rank, f"uid-{rank}", f"10.0.0.{rank}:29470", incarnation)
            for rank, incarnation in enumerate(incarnations)
        ),
        timeout,
    )


def test_the_same_members_keep_their_session_and_each_group_has_its_own() -> None:
    sessions = TransferSessions()
    first = sessions.session("0", members("a", "b"))
    assert sessions.session("0", members("a", "b")) == first
    other = sessions.session("1", members("c", "d"))
    assert other != first and sessions.started == 2
    assert sessions.session("0", members("a", "b")) == first  # group "1" changed nothing


def test_a_changed_member_or_timeout_starts_a_new_session() -> None:
    sessions = TransferSessions()
    first = sessions.session("0", members("a", "b"))
    restarted = sessions.session("0", members("a", "b2"))  # a sidecar started again
    assert restarted != first
    longer = sessions.session("0", members("a", "b2", timeout=60.0))
    assert longer not in (first, restarted)
    # Back to earlier members: still a new session, the old group may be gone.
    assert sessions.session("0", members("a", "b")) not in (first, restarted, longer)
    assert sessions.started == 4


def test_after_a_failure_no_session_is_reused() -> None:
    sessions = TransferSessions()
    zero, one = sessions.session("0", members("a")), sessions.session("1", members("b"))
    sessions.discard("0")
    assert sessions.session("0", members("a")) != zero
    assert sessions.session("1", members("b")) == one
    sessions.discard_all()
    assert sessions.session("1", members("b")) != one


def test_two_operators_never_name_the_same_session() -> None:
    """Each operator process (or placement) has its own nonce and secret."""
    left, right = TransferSessions(), TransferSessions()
    assert left.session("0", members("a")) != right.session("0", members("a"))
    assert left.secret != right.secret and len(left.secret) >= 32
