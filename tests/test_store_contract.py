"""The Store contract: what the gate relies on from any store. Every implementation runs this suite.

Each entry of `STORES` opens stores on one database — a file for SQLite, a fresh database of the session's
throwaway cluster for PostgreSQL (tests/postgres_cluster.py) — as many times as a test asks, as separate
processes would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from hitl_mcp.decisions import plan
from hitl_mcp.errors import NotAllowed, NotFound, NotPending
from hitl_mcp.models import Request, RequestSummary, Status
from hitl_mcp.policy import DEFAULT_RULE, Level, Snapshot
from hitl_mcp.store import ClaimFor, NewRequest, Planner, Store
from hitl_mcp.store.sqlite import SQLiteStore

NOW = 1_000_000.0
TTL = 3600.0
DEFAULT = Snapshot(rule_index=None, approval="required", levels=DEFAULT_RULE.levels)

# Given the test's request and folder, a way to make stores on one database.
StoreFactory = Callable[[pytest.FixtureRequest, Path], Callable[[], Store]]


def sqlite_stores(request: pytest.FixtureRequest, folder: Path) -> Callable[[], Store]:
    return lambda: SQLiteStore(folder / "store.db")


def postgres_stores(request: pytest.FixtureRequest, folder: Path) -> Callable[[], Store]:
    from hitl_mcp.store.postgres import PostgresStore

    url: str = request.getfixturevalue("pg_url")  # asked only here: SQLite runs start no cluster
    return lambda: PostgresStore(url)


STORES: dict[str, StoreFactory] = {"sqlite": sqlite_stores, "postgresql": postgres_stores}


@pytest.fixture(params=sorted(STORES))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Awaitable[Store]]:
    """Opens a store on the same database each call — as another process would."""
    factory = STORES[request.param](request, tmp_path)
    opened: list[Store] = []

    async def open_one() -> Store:
        store = factory()
        await store.open()
        opened.append(store)
        return store

    return open_one


@pytest.fixture
async def store(open_store: Callable[[], Awaitable[Store]]) -> AsyncIterator[Store]:
    opened = await open_store()
    yield opened
    await opened.close()


def new(request_id: str, *, requested_by: str = "agent", created_at: float = NOW) -> NewRequest:
    return NewRequest(
        request_id=request_id,
        tool="buy_stock",
        arguments={"symbol": "GOOGL", "quantity": 1, "price": 1.0},
        arguments_digest="d" * 64,
        summary="Buy 1 GOOGL at $1.00 — total $1.00",
        preview={"total": 1.0},
        requested_by=requested_by,
        created_at=created_at,
        expires_at=created_at + TTL,
        policy=DEFAULT,
    )


def approval(principal: str, now: float = NOW) -> Planner:
    return lambda current: plan(
        current, principal=principal, roles=(), verdict="approve", reason=None, edit=None, now=now
    )


async def test_an_inserted_request_reads_back_pending_with_its_filed_event(store: Store) -> None:
    filed = await store.insert(new("a1"))

    assert filed.status is Status.PENDING
    assert await store.get("a1") == filed
    assert [event.event for event in await store.audit_trail("a1")] == ["filed"]


async def test_a_decision_applies_its_plan_and_a_refusing_plan_writes_nothing(store: Store) -> None:
    await store.insert(new("a1"))

    with pytest.raises(NotAllowed):
        await store.decide("a1", approval("agent"), NOW)
    assert [event.event for event in await store.audit_trail("a1")] == ["filed"]
    decided = await store.decide("a1", approval("alice"), NOW)

    assert decided.status is Status.APPROVED
    assert [d.principal for d in decided.decisions] == ["alice"]
    with pytest.raises(NotPending):
        await store.decide("a1", approval("bob"), NOW)
    with pytest.raises(NotFound):
        await store.decide("nope", approval("bob"), NOW)


async def test_exactly_one_of_many_concurrent_claims_wins(
    store: Store, open_store: Callable[[], Awaitable[Store]]
) -> None:
    await store.insert(new("a1"))
    await store.decide("a1", approval("alice"), NOW)
    others = [await open_store() for _ in range(4)]
    won: list[Request] = []

    async def claim(claimant: Store, worker: str) -> None:
        claimed = await claimant.claim("a1", worker, NOW)
        if claimed is not None:
            won.append(claimed)

    async with anyio.create_task_group() as tasks:
        for number, claimant in enumerate([store, *others]):
            tasks.start_soon(claim, claimant, f"worker-{number}")
    for other in others:
        await other.close()

    assert len(won) == 1
    assert won[0].status is Status.EXECUTING
    assert await store.claim("a1", "late", NOW) is None


async def test_the_approval_that_completes_the_policy_claims_the_request_in_the_same_transaction(
    store: Store,
) -> None:
    await store.insert(targeted("here", "buy_stock", '{"ledger":"/a"}'))
    await store.insert(targeted("there", "buy_stock", '{"ledger":"/b"}'))
    await store.insert(new("rejected"))
    ours = ClaimFor("w", '{"buy_stock": "{\\"ledger\\":\\"/a\\"}"}')

    claimed = await store.decide("here", approval("alice"), NOW, ours)
    # Filed against a target this claimant lacks: decided, left approved for a process that has it.
    elsewhere = await store.decide("there", approval("alice"), NOW, ours)
    rejection = lambda current: plan(  # noqa: E731
        current, principal="alice", roles=(), verdict="reject", reason="no", edit=None, now=NOW
    )
    rejected = await store.decide("rejected", rejection, NOW, ours)

    assert (claimed.status, claimed.claimed_by) == (Status.EXECUTING, "w")
    assert [d.principal for d in claimed.decisions] == ["alice"]
    assert [event.event for event in await store.audit_trail("here")] == ["filed", "approved", "claimed"]
    assert await store.claim("here", "late", NOW) is None
    assert (elsewhere.status, elsewhere.claimed_by) == (Status.APPROVED, None)
    assert [event.event for event in await store.audit_trail("there")] == ["filed", "approved"]
    assert (rejected.status, rejected.claimed_by) == (Status.REJECTED, None)


async def test_a_claiming_decision_short_of_the_policy_claims_nothing(store: Store) -> None:
    two = Snapshot(rule_index=0, approval="required", levels=(Level(count=2),))
    await store.insert(NewRequest(**{**new("q1").__dict__, "policy": two}))

    first = await store.decide("q1", approval("alice"), NOW, ClaimFor("w"))
    second = await store.decide("q1", approval("bob"), NOW, ClaimFor("w"))

    assert (first.status, first.claimed_by) == (Status.PENDING, None)
    assert (second.status, second.claimed_by) == (Status.EXECUTING, "w")


async def test_finish_applies_only_to_an_executing_request(store: Store) -> None:
    await store.insert(new("a1"))
    assert await store.finish("a1", Status.EXECUTED, "w", {"ok": True}, None, NOW) is None
    await store.decide("a1", approval("alice"), NOW)
    await store.claim("a1", "w", NOW)

    done = await store.finish("a1", Status.EXECUTED, "w", {"ok": True}, None, NOW)

    assert done is not None
    assert (done.status, done.result) == (Status.EXECUTED, {"ok": True})
    assert await store.finish("a1", Status.FAILED, "w", None, "again", NOW) is None
    events = [event.event for event in await store.audit_trail("a1")]
    assert events == ["filed", "approved", "claimed", "executed"]


async def test_a_claim_after_expiry_fails_and_the_sweep_expires_open_requests(store: Store) -> None:
    await store.insert(new("old"))
    await store.insert(new("young", created_at=NOW + TTL - 1))
    await store.insert(new("approved"))
    await store.decide("approved", approval("alice"), NOW)
    later = NOW + TTL + 1

    assert await store.claim("approved", "w", later) is None
    assert sorted(await store.expire_overdue(later)) == ["approved", "old"]
    assert await store.expire_overdue(later) == []
    young = await store.get("young")
    assert young is not None
    assert young.status is Status.PENDING


async def test_only_the_requester_cancels_and_only_while_pending(store: Store) -> None:
    await store.insert(new("a1"))

    assert not await store.cancel("a1", "alice", NOW)
    assert await store.cancel("a1", "agent", NOW)
    assert not await store.cancel("a1", "agent", NOW)
    cancelled = await store.get("a1")
    assert cancelled is not None
    assert cancelled.status is Status.CANCELLED


async def test_pages_are_keyset_ordered_and_filtered(store: Store) -> None:
    for number in range(5):
        await store.insert(new(f"r{number}", created_at=NOW + number))
    await store.cancel("r2", "agent", NOW)

    first = await store.page((Status.PENDING,), None, 2, None)
    rest = await store.page((Status.PENDING,), None, 2, first.next_cursor)
    everything = await store.page(None, None, 10, None)

    assert [r.request_id for r in first.requests + rest.requests] == ["r0", "r1", "r3", "r4"]
    assert rest.next_cursor is None
    assert len(everything.requests) == 5
    assert (await store.page(None, "send_email", 10, None)).requests == []


async def test_prefixes_match_ids_and_nothing_else(store: Store) -> None:
    await store.insert(new("abc1"))
    await store.insert(new("abc2"))
    await store.insert(new("abd3"))

    assert await store.match_prefix("abc", limit=5) == ["abc1", "abc2"]
    assert await store.match_prefix("abd") == ["abd3"]
    assert await store.match_prefix("zz") == []


async def test_approved_requests_nobody_claimed_are_found_for_release(store: Store) -> None:
    await store.insert(new("a1"))
    await store.insert(new("a2"))
    await store.decide("a1", approval("alice"), NOW)
    await store.decide("a2", approval("alice"), NOW)
    await store.claim("a2", "w", NOW)

    assert await store.approved_unclaimed(NOW + 1) == ["a1"]
    assert await store.approved_unclaimed(NOW) == []


async def test_another_connections_commit_moves_the_counter_and_shows_what_changed(
    store: Store, open_store: Callable[[], Awaitable[Store]]
) -> None:
    await store.insert(new("a1"))
    _, seen = await store.changed_since(None)
    before = await store.change_counter()
    other = await open_store()
    try:
        await other.insert(new("a2"))
        await other.cancel("a1", "agent", NOW)
    finally:
        await other.close()

    assert await store.change_counter() != before
    changed, newest = await store.changed_since(seen)
    assert sorted(changed) == ["a1", "a2"]
    assert newest > seen
    assert await store.changed_since(newest) == ([], newest)


def targeted(request_id: str, tool: str, target: str) -> NewRequest:
    filed = new(request_id)
    return NewRequest(**{**filed.__dict__, "tool": tool, "target": target})


async def test_a_claim_takes_only_requests_filed_against_a_target_it_has(store: Store) -> None:
    await store.insert(targeted("here", "buy_stock", '{"ledger":"/a"}'))
    await store.insert(targeted("there", "buy_stock", '{"ledger":"/b"}'))
    await store.insert(targeted("other", "send_email", '{"smtp":"x"}'))
    for request_id in ("here", "there", "other"):
        await store.decide(request_id, approval("alice"), NOW)
    ours = '{"buy_stock": "{\\"ledger\\":\\"/a\\"}"}'

    assert await store.approved_unclaimed(NOW + 1, targets=ours) == ["here"]
    assert await store.claim("there", "w", NOW, ours) is None
    assert await store.claim("other", "w", NOW, ours) is None
    claimed = await store.claim("here", "w", NOW, ours)
    assert claimed is not None and claimed.target == {"ledger": "/a"}


async def test_repeats_return_the_first_request_and_file_nothing(store: Store) -> None:
    first = await store.insert(NewRequest(**{**new("k1").__dict__, "idempotency_key": "key"}))
    again = await store.insert(NewRequest(**{**new("k2").__dict__, "idempotency_key": "key"}))
    pending = await store.insert(NewRequest(**{**new("d1").__dict__, "dedup_since": NOW - 60}))
    repeat = await store.insert(NewRequest(**{**new("d2").__dict__, "dedup_since": NOW - 60}))
    elsewhere = await store.insert(NewRequest(**{**new("d3", requested_by="bot").__dict__, "dedup_since": 0}))

    assert again.request_id == first.request_id == "k1"
    # k1 is pending with the same digest, so d1 repeats it too; d2 repeats what d1 returned.
    assert pending.request_id == repeat.request_id == "k1"
    assert elsewhere.request_id == "d3"
    assert await store.get("k2") is None and await store.get("d2") is None


async def test_a_failure_without_effect_can_be_retried_once_and_one_with_unknown_effect_never(
    store: Store,
) -> None:
    for request_id in ("clean", "unknown"):
        await store.insert(new(request_id))
        await store.decide(request_id, approval("alice"), NOW)
        await store.claim(request_id, "w", NOW)
    await store.finish("clean", Status.FAILED, "w", None, "refused", NOW, effect="none")
    await store.finish("unknown", Status.FAILED, "w", None, "lost", NOW, effect="unknown")

    retried = await store.retry("clean", "bob", NOW + 1)

    assert retried is not None and retried.status is Status.APPROVED and retried.error is None
    assert await store.retry("clean", "bob", NOW + 2) is None
    assert await store.retry("unknown", "bob", NOW + 1) is None
    assert [event.event for event in await store.audit_trail("clean")][-2:] == ["failed", "retried"]


async def test_an_executor_that_lost_its_target_leaves_the_request_executing_of_unknown_outcome(
    store: Store,
) -> None:
    await store.insert(new("a1"))
    await store.decide("a1", approval("alice"), NOW)
    await store.claim("a1", "w", NOW)

    assert await store.mark_unknown("a1", "someone-else", "lost", NOW) is None
    marked = await store.mark_unknown("a1", "w", "sent, then lost", NOW)

    assert marked is not None and marked.status is Status.EXECUTING and marked.effect == "unknown"
    assert marked.error == "sent, then lost"


async def test_events_that_leave_no_request_are_audited_but_not_published(store: Store) -> None:
    _, seen = await store.changed_since(None)
    await store.record_event("p1", "passed", "agent", {"tool": "fs__read"}, NOW)
    await store.insert(new("a1"))

    changed, newest = await store.changed_since(seen)

    assert changed == ["a1"] and newest > seen
    assert [event.event for event in await store.audit_trail("p1")] == ["passed"]


async def test_racing_retries_in_separate_stores_file_one_request(
    store: Store, open_store: Callable[[], Awaitable[Store]]
) -> None:
    others = [await open_store() for _ in range(4)]
    filed: list[str] = []

    async def retry(filer: Store, number: int) -> None:
        keyed = NewRequest(**{**new(f"k{number}").__dict__, "idempotency_key": "same-call"})
        filed.append((await filer.insert(keyed)).request_id)
        window = NewRequest(**{**new(f"d{number}", requested_by="bot").__dict__, "dedup_since": NOW - 60})
        filed.append((await filer.insert(window)).request_id)

    async with anyio.create_task_group() as tasks:
        for number, filer in enumerate([store, *others]):
            tasks.start_soon(retry, filer, number)
    for other in others:
        await other.close()

    assert len({request_id for request_id in filed if request_id.startswith("k")}) == 1
    assert len({request_id for request_id in filed if request_id.startswith("d")}) == 1
    assert len((await store.page(None, None, 50, None)).requests) == 2


async def test_housekeeping_in_several_stores_at_once_does_each_thing_once(
    store: Store, open_store: Callable[[], Awaitable[Store]]
) -> None:
    for number in range(40):
        await store.insert(new(f"r{number:02}"))
    others = [await open_store() for _ in range(3)]
    expired: list[str] = []

    async def sweep(sweeper: Store) -> None:
        while batch := await sweeper.expire_overdue(NOW + TTL + 1, limit=7):
            expired.extend(batch)

    async with anyio.create_task_group() as tasks:
        for sweeper in [store, *others]:
            tasks.start_soon(sweep, sweeper)
    for other in others:
        await other.close()

    assert sorted(expired) == [f"r{number:02}" for number in range(40)]
    for number in range(40):
        assert [event.event for event in await store.audit_trail(f"r{number:02}")] == ["filed", "expired"]


async def test_the_audit_trail_streams_in_order_with_its_head(store: Store) -> None:
    await store.insert(new("a1"))
    await store.insert(new("a2", created_at=NOW + 10))
    await store.cancel("a1", "agent", NOW + 20)

    records = [record async for record in store.audit_records()]
    later = [record.seq async for record in store.audit_records(since=NOW + 10)]
    only = [record.event async for record in store.audit_records(request_id="a1", until=NOW + 20)]

    assert [record.seq for record in records] == [1, 2, 3]
    assert records[1].prev_hash == records[0].hash
    assert await store.audit_head() == (3, records[-1].hash)
    assert later == [2, 3] and only == ["filed"]
    assert await store.audit_request_ids("a") == ["a1", "a2"]
    assert await store.audit_request_ids("a2") == ["a2"]


async def test_what_was_stored_reads_back_exactly(store: Store) -> None:
    # NUL in an agent's text, and numbers a JSON type would rewrite (1e20 as an integer): the digest of
    # the approved arguments and the audit hashes are checked against what reads back.
    strange = NewRequest(
        **{
            **new("s1").__dict__,
            "arguments": {"symbol": "X\x00\u202e", "quantity": 1e20, "price": 0.1 + 0.2},
            "summary": "Delete rows where email = 'x\u202e\x00\x1b[31m'",
            "preview": {"sample": ["\x00", "☃", "\ud7ff"], "big": 12345678901234567890},
        }
    )
    await store.insert(strange)
    await store.decide("s1", approval("alice"), NOW)
    reread = await store.get("s1")

    assert reread is not None
    assert reread.arguments == strange.arguments and reread.summary == strange.summary
    assert reread.preview == strange.preview
    assert [event.event for event in await store.audit_trail("s1")] == ["filed", "approved"]


async def test_summary_lines_are_the_json_of_the_records_summaries(store: Store) -> None:
    two = Snapshot(rule_index=0, approval="required", levels=(Level(count=2),))
    await store.insert(new("s1"))
    await store.insert(NewRequest(**{**new("s2", created_at=NOW + 0.123456).__dict__, "policy": two}))
    await store.decide("s2", approval("alice"), NOW)  # half-way through its quorum: still pending
    await store.insert(NewRequest(**{**new("s3").__dict__, "summary": "Buy ‮ \x00 <b>GOOGL</b>"}))
    await store.insert(new("done"))
    await store.decide("done", approval("alice"), NOW)

    for limit, cursor in ((2, None), (50, None)):
        records = await store.page([Status.PENDING], None, limit, cursor)
        lines = await store.summaries([Status.PENDING], None, limit, cursor)

        assert lines.lines == [RequestSummary.of(r).model_dump(mode="json") for r in records.requests]
        assert lines.next_cursor == records.next_cursor
    assert [line["request_id"] for line in lines.lines] == ["s1", "s2", "s3"]
    assert lines.lines[1]["waits_on"] == "2 × anyone but the requester"
