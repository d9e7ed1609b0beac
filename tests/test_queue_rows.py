"""A queue line read straight from a stored row (`queue_rows`, which `hitl list`'s quick path and the
SQLite store's `summaries` use) says who a request waits on exactly as its whole record does."""

from __future__ import annotations

from datetime import UTC, datetime

import hypothesis
from hypothesis import strategies as st

from hitl_mcp.models import Decision, approval_state
from hitl_mcp.policy import Level, Snapshot
from hitl_mcp.queue_rows import may_decide
from hitl_mcp.store.sqlite_rows import summary_of

ROLES = ("trader", "engineer", "lead")
PRINCIPALS = ("alice", "bob", "carol", "dave")

levels = st.lists(
    st.builds(
        Level,
        roles=st.lists(st.sampled_from(ROLES), max_size=2, unique=True).map(tuple),
        count=st.integers(1, 3),
    ),
    min_size=1,
    max_size=3,
).map(tuple)
snapshots = st.one_of(
    st.builds(
        Snapshot, rule_index=st.none() | st.integers(0, 3), approval=st.just("required"), levels=levels
    ),
    st.builds(Snapshot, rule_index=st.integers(0, 3), approval=st.just("confirm"), levels=levels),
    st.builds(Snapshot, rule_index=st.integers(0, 3), approval=st.sampled_from(["none", "deny"])),
)
decisions = st.lists(
    st.builds(
        Decision,
        principal=st.sampled_from(PRINCIPALS),
        verdict=st.sampled_from(["approve", "approve", "reject"]),
        decided_at=st.just(datetime(2026, 1, 1, tzinfo=UTC)),
        roles=st.lists(st.sampled_from(ROLES), max_size=2, unique=True),
    ),
    max_size=6,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(snapshot=snapshots, made=decisions, escalated=st.booleans())
def test_a_stored_rows_line_waits_on_whom_its_record_waits_on(
    snapshot: Snapshot, made: list[Decision], escalated: bool
) -> None:
    stored = snapshot.model_dump_json()
    record = approval_state(snapshot, made, escalated=escalated)
    row = (
        1,
        "r1",
        "buy_stock",
        "{}",
        "s",
        "pending",
        "agent",
        0.0,
        60.0,
        stored,
        0,
        0 if escalated else None,
    )

    line = summary_of(row, made)

    assert line["waits_on"] == record.may_decide
    assert line["escalated"] == record.escalated
    approvers = [d for d in made if d.verdict == "approve"]
    if not approvers:
        # The answer shared by every undecided request under a rule is the same as one worked out.
        assert may_decide(stored, []) == record.may_decide
