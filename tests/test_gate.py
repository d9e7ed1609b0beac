"""The lifecycle through the gate's Python API, on a real SQLite store and real actions."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from hitl_mcp.config import Settings
from hitl_mcp.errors import AmbiguousId, Expired, InvalidArguments, NotAllowed, NotFound, NotPending
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.ledger import Ledger
from hitl_mcp.models import Status
from tests.clock import Clock
from tests.smtp_sink import SmtpSink

BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.config_path.parent / "ledger.db", 100_000.0)  # type: ignore[union-attr]


def audit_events(db: Path, request_id: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT event FROM audit WHERE request_id = ? ORDER BY seq", (request_id,))
        return [row[0] for row in rows]


async def test_filing_runs_nothing_and_returns_a_pending_request(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", BUY, "agent")

    assert request.status is Status.PENDING
    assert request.summary == "Buy 10 GOOGL at $150.00 — total $1,500.00"
    assert request.preview["total"] == 1500.0
    assert request.requested_by == "agent"
    assert await ledger(settings).orders() == []
    assert audit_events(settings.db_path, request.request_id) == ["filed"]


async def test_approval_executes_once_with_the_approved_arguments(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", BUY, "agent")

    done = await gate.approve(request.request_id, "alice", "looks fine")

    assert done.status is Status.EXECUTED
    assert done.result is not None and done.result["total"] == 1500.0
    assert [(d.principal, d.verdict, d.reason) for d in done.decisions] == [
        ("alice", "approve", "looks fine")
    ]
    orders = await ledger(settings).orders()
    assert [(o.order_id, o.symbol, o.quantity) for o in orders] == [(request.request_id, "GOOGL", 10)]
    assert audit_events(settings.db_path, request.request_id) == ["filed", "approved", "claimed", "executed"]


async def test_a_second_approval_is_refused_and_runs_nothing(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", BUY, "agent")
    await gate.approve(request.request_id, "alice")

    with pytest.raises(NotPending, match="executed, not pending"):
        await gate.approve(request.request_id, "bob")
    assert len(await ledger(settings).orders()) == 1


async def test_rejected_request_never_runs(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", BUY, "agent")

    rejected = await gate.reject(request.request_id, "alice", "too risky")

    assert rejected.status is Status.REJECTED
    assert rejected.decisions[0].reason == "too risky"
    with pytest.raises(NotPending):
        await gate.approve(request.request_id, "bob")
    assert await gate.execute(request.request_id) == await gate.get(request.request_id)
    assert await ledger(settings).orders() == []


async def test_cancelled_request_never_runs(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", BUY, "agent")

    with pytest.raises(NotAllowed, match="only its requester"):
        await gate.cancel(request.request_id, "alice")
    cancelled = await gate.cancel(request.request_id, "agent")

    assert cancelled.status is Status.CANCELLED
    with pytest.raises(NotPending):
        await gate.approve(request.request_id, "alice")
    assert await ledger(settings).orders() == []


async def test_nobody_decides_their_own_request(gate: Gate) -> None:
    request = await gate.file("buy_stock", BUY, "agent")

    with pytest.raises(NotAllowed, match="may not decide its own request"):
        await gate.approve(request.request_id, "agent")
    with pytest.raises(NotAllowed):
        await gate.reject(request.request_id, "agent", "no")
    assert (await gate.get(request.request_id)).status is Status.PENDING


async def test_expiry_is_enforced_when_deciding(gate: Gate, settings: Settings) -> None:
    clock = Clock(1_000_000.0)
    gate.clock = clock
    request = await gate.file("buy_stock", BUY, "agent")
    clock.now += settings.ttl_for("buy_stock") + 1

    with pytest.raises(Expired, match="will never run"):
        await gate.approve(request.request_id, "alice")
    assert (await gate.get(request.request_id)).status is Status.EXPIRED
    assert await ledger(settings).orders() == []


async def test_expiry_is_enforced_when_executing(gate: Gate, settings: Settings) -> None:
    clock = Clock(1_000_000.0)
    gate.clock = clock
    request = await gate.file("buy_stock", BUY, "agent")
    # Approved, but the approver died before claiming; by the time anyone claims it, it is overdue.
    assert (await gate.decide(request.request_id, "alice", "approve")).status is Status.APPROVED
    clock.now += settings.ttl_for("buy_stock") + 1

    after = await gate.execute(request.request_id)

    assert after.status is Status.EXPIRED
    assert await ledger(settings).orders() == []


async def test_sweep_marks_overdue_requests_expired(gate: Gate, settings: Settings) -> None:
    clock = Clock(1_000_000.0)
    gate.clock = clock
    old = await gate.file("buy_stock", BUY, "agent")
    clock.now += settings.ttl_for("buy_stock") - 10
    young = await gate.file("buy_stock", BUY, "agent")
    clock.now += 11

    assert await gate.sweep() == 1

    assert (await gate.get(old.request_id)).status is Status.EXPIRED
    assert (await gate.get(young.request_id)).status is Status.PENDING
    assert audit_events(settings.db_path, old.request_id) == ["filed", "expired"]


async def test_orphaned_approval_is_released_by_housekeeping(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", BUY, "agent")
    gate.clock = Clock(gate.clock() - 60)
    await gate.decide(request.request_id, "alice", "approve")
    gate.clock = time.time

    assert await gate.release_orphans() == 1

    assert (await gate.get(request.request_id)).status is Status.EXECUTED
    assert len(await ledger(settings).orders()) == 1


async def test_failed_action_is_recorded_not_retried(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", {"symbol": "BRK.A", "quantity": 1, "price": 700_000.0}, "agent")

    done = await gate.approve(request.request_id, "alice")

    assert done.status is Status.FAILED
    assert done.error is not None and "insufficient cash" in done.error
    assert await gate.execute(request.request_id) == done
    assert await ledger(settings).orders() == []


async def test_email_is_sent_once_with_a_message_id_from_the_request(gate: Gate, smtp: SmtpSink) -> None:
    request = await gate.file(
        "send_email", {"to": "carol@example.org", "subject": "Hello", "body": "Hi Carol"}, "agent"
    )
    assert smtp.messages == []

    done = await gate.approve(request.request_id, "alice")

    [received] = await smtp.wait_for_async(1)
    assert done.status is Status.EXECUTED
    assert request.request_id in (received.message_id or "")
    assert received.rcpt_tos == ("carol@example.org",)


async def test_delete_runs_on_the_target_database(gate: Gate, target_db: Path) -> None:
    request = await gate.file("delete_database_records", {"table": "users", "condition": "age < 30"}, "agent")
    assert request.preview["matching_rows"] == 2

    done = await gate.approve(request.request_id, "alice")

    assert done.status is Status.EXECUTED
    with sqlite3.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 2


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("buy_stock", {"symbol": "GOOGL", "quantity": 0, "price": 1.0}, "quantity"),
        ("buy_stock", {"symbol": "GOOGL", "quantity": 1, "price": float("inf")}, "price"),
        ("buy_stock", {"symbol": "", "quantity": 1, "price": 1.0}, "symbol"),
        ("send_email", {"to": "a@example.org\r\nBcc: x@evil.com", "subject": "s", "body": "b"}, "to"),
        ("send_email", {"to": "a@example.org", "subject": "s\nBcc: x@evil.com", "body": "b"}, "subject"),
        ("delete_database_records", {"table": "users", "condition": "1=1; DROP TABLE users"}, "condition"),
        ("delete_database_records", {"table": "secrets", "condition": "id = 1"}, "table"),
        ("no_such_tool", {}, "tool"),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_writes_nothing(
    gate: Gate, settings: Settings, tool: str, arguments: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArguments, match=field):
        await gate.file(tool, arguments, "agent")

    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 0


async def test_ids_resolve_from_any_unique_prefix(gate: Gate) -> None:
    first = await gate.file("buy_stock", BUY, "agent")
    second = await gate.file("buy_stock", BUY, "agent")
    common = 0
    while first.request_id[common] == second.request_id[common]:
        common += 1

    assert await gate.resolve(first.request_id[: common + 1]) == first.request_id
    assert await gate.resolve(first.request_id.upper()) == first.request_id
    with pytest.raises(NotFound):
        await gate.resolve("zzz")
    with pytest.raises(NotFound):
        await gate.resolve("0" * 20 if not first.request_id.startswith("0" * 20) else "f" * 20)
    if common:
        with pytest.raises(AmbiguousId):
            await gate.resolve(first.request_id[:common])


async def test_list_pages_oldest_first_with_a_cursor(gate: Gate) -> None:
    filed = [await gate.file("buy_stock", BUY, "agent") for _ in range(5)]
    await gate.reject(filed[1].request_id, "alice", "no")

    first = await gate.list(limit=2)
    second = await gate.list(limit=2, cursor=first.next_cursor)

    seen = [r.request_id for r in first.requests + second.requests]
    assert seen == [filed[i].request_id for i in (0, 2, 3, 4)]
    assert second.next_cursor is None
    with pytest.raises(InvalidArguments, match="cursor"):
        await gate.list(cursor="'; DROP TABLE requests")


async def test_wait_returns_as_soon_as_another_gate_decides(gate: Gate, settings: Settings) -> None:
    request = await gate.file("buy_stock", BUY, "agent")
    results = []

    async def waiter() -> None:
        results.append(await gate.wait(request.request_id, 30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks, open_gate(settings) as other:
            tasks.start_soon(waiter)
            await other.reject(request.request_id, "alice", "no")

    assert results[0].status is Status.REJECTED


async def test_wait_gives_up_at_the_timeout_with_the_record_as_it_stands(gate: Gate) -> None:
    request = await gate.file("buy_stock", BUY, "agent")

    with anyio.fail_after(5):
        waited = await gate.wait(request.request_id, 0.1)

    assert waited.status is Status.PENDING


async def test_a_filed_request_survives_reopening_the_store(settings: Settings) -> None:
    async with open_gate(settings) as first:
        request = await first.file("buy_stock", BUY, "agent")
    async with open_gate(settings) as second:
        done = await second.approve(request.request_id, "alice")
    assert done.status is Status.EXECUTED


async def test_arguments_changed_after_approval_are_caught_at_execution(
    gate: Gate, settings: Settings
) -> None:
    request = await gate.file("buy_stock", BUY, "agent")
    await gate.decide(request.request_id, "alice", "approve")
    # Someone with write access to the store swaps the approved arguments before the claim.
    with sqlite3.connect(settings.db_path) as conn:
        conn.execute(
            "UPDATE requests SET arguments = ? WHERE id = ?",
            ('{"price":150.0,"quantity":500,"symbol":"GOOGL"}', request.request_id),
        )
    conn.close()

    after = await gate.execute(request.request_id)

    assert after.status is Status.FAILED
    assert after.error is not None and "no longer match what was approved" in after.error
    assert await ledger(settings).orders() == []
