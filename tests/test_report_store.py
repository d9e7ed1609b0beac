"""The report counted by the store's SQL agrees with the report's definition (`build`, one pass in Python)
on a varied trail — quorums, confirmations, escalations, retries, notices, windows, odd details — in a real
SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from hitl_mcp.audit import AuditRecord
from hitl_mcp.report import build, from_store
from hitl_mcp.store import sqlite_report
from hitl_mcp.store.postgres import PostgresStore
from hitl_mcp.store.sqlite import SQLiteStore

TOOLS = ("buy_stock", "send_email", "notes__write_note")
PEOPLE = ("alice", "bob", "carol")
# Each history a request may follow: (event, details) after its first record.
STEPS: list[list[tuple[str, dict[str, Any]]]] = [
    [],
    [("approved", {"status": "approved"}), ("claimed", {}), ("executed", {})],
    [("approved", {"status": "approved"}), ("claimed", {}), ("failed", {}), ("retried", {})],
    [("approved", {"status": "approved"}), ("claimed", {}), ("failed", {})],
    [("rejected", {"status": "rejected", "reason": "no"})],
    [("approved", {"status": "pending"}), ("approved", {"status": "approved"}), ("claimed", {})],
    [("approved", {"status": "pending"}), ("rejected", {"status": "rejected"})],
    [("edited", {"changes": {}}), ("escalated", {"level": 1}), ("escalated", {"level": 2}), ("expired", {})],
    [("cancelled", {})],
    [("policy-auto-approved", {"policy": "never"}), ("claimed", {}), ("executed", {})],
    [("confirmed", {"confirmation": True}), ("claimed", {}), ("executed", {})],
    [("rejected", {"confirmation": True})],
    [("rejected", {"confirmation": "yes"})],
    [("approved", {"confirmation": 0, "status": ""}), ("claimed", {}), ("unknown", {})],
    [("approved", {"status": 7}), ("rejected", {})],
]


def varied_trail(seed: int, *, mangled: bool) -> list[AuditRecord]:
    rng = random.Random(seed)
    records: list[AuditRecord] = []

    def add(request_id: str, event: str, actor: str, at: float, details: str) -> None:
        records.append(AuditRecord(len(records) + 1, request_id, event, actor, at, details, "", ""))

    now = 1000.0
    for number in range(400):
        request_id = f"r{number}"
        now += rng.choice((0.5, 1.0, 2.5))
        first = rng.choice(("filed",) * 8 + ("denied", "passed", "approved"))
        tool: Any = rng.choice((*TOOLS, "", 5, None))
        add(request_id, first, "agent", now, json.dumps({"tool": tool, "digest": "d"}))
        at = now
        for event, details in rng.choice(STEPS):
            at += rng.choice((1.0, 3.0, 7.0, 60.0))
            add(request_id, event, rng.choice(PEOPLE), at, json.dumps(details))
        if rng.random() < 0.05:
            add("", rng.choice(("tool-changed", "token-made", "token-revoked")), "admin", at, "{}")
        if mangled and rng.random() < 0.03:
            add(request_id, "approved", "dave", at + 1, "not json {")
    # A late record of an early request (filed before any window below) must not make it a new one.
    add("r0", "expired", "gate", now + 1, "{}")
    return records


def windows(records: list[AuditRecord]) -> list[float | None]:
    ats = sorted(record.at for record in records)
    return [None, ats[0], ats[len(ats) // 3], ats[len(ats) // 2] + 0.25, ats[-1], ats[-1] + 1]


def _rows(records: list[AuditRecord]) -> list[tuple[Any, ...]]:
    return [(r.seq, r.request_id, r.event, r.actor, r.at, r.details, "", "") for r in records]


async def test_the_store_counts_the_report_build_defines_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "hitl.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    records = varied_trail(20, mangled=True)
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _rows(records))
    conn.close()
    store = SQLiteStore(path, readonly=True)
    await store.open()
    try:
        for since in windows(records):
            assert (await from_store(store, since)).to_json() == build(records, since).to_json(), since
    finally:
        await store.close()


async def test_the_store_counts_the_report_build_defines_in_postgres(pg_url: str) -> None:
    # PostgreSQL's json column refuses text that is no JSON, so this trail has no mangled details.
    records = varied_trail(21, mangled=False)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.executemany(
            "INSERT INTO audit (seq, request_id, event, actor, at, details, prev_hash, hash) "
            "VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8)",
            _rows(records),
        )
    finally:
        await conn.close()
    store = PostgresStore(pg_url, readonly=True)
    await store.open()
    try:
        for since in windows(records):
            assert (await from_store(store, since)).to_json() == build(records, since).to_json(), since
    finally:
        await store.close()


def test_the_varied_trail_reaches_every_figure() -> None:
    # The comparison above means something only if the trail exercises each figure.
    report = build(varied_trail(20, mangled=True))
    assert report.approved and report.rejected and report.auto_approved and report.escalated
    assert report.expired and report.decisions_timed > 50 and len(report.approvers) >= 3
    assert "(unknown)" in report.tools and {"pending", "executing", "failed"} <= set(report.outcomes)
    assert {"tool-changed", "passed", "denied", "confirmed"} <= set(report.events)


async def _sqlite_store_with(path: Path, records: list[AuditRecord]) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _rows(records))
    conn.close()


async def _agrees(path: Path, records: list[AuditRecord]) -> None:
    store = SQLiteStore(path, readonly=True)
    await store.open()
    try:
        for since in windows(records):
            assert (await from_store(store, since)).to_json() == build(records, since).to_json(), since
    finally:
        await store.close()


def drop_running_totals(conn: sqlite3.Connection) -> None:
    """The report's running totals (schema 8's triggers and tables) gone, as an older store had none."""
    for name in sqlite_report.TRIGGER_NAMES:
        conn.execute(f"DROP TRIGGER {name}")
    for table in ("report_totals", "report_waits", "report_buckets"):
        conn.execute(f"DROP TABLE {table}")


async def test_a_store_from_before_the_running_totals_gets_them_filled_at_its_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "hitl.db"
    records = varied_trail(22, mangled=True)
    await _sqlite_store_with(path, records)
    # As a schema 6 store was: no triggers, no totals.
    conn = sqlite3.connect(path)
    with conn:
        drop_running_totals(conn)
        conn.execute("PRAGMA user_version = 6")
    conn.close()

    store = SQLiteStore(path)  # opening for writing upgrades it
    await store.open()
    await store.close()

    await _agrees(path, records)


async def test_requests_archived_away_leave_the_report_with_their_records(tmp_path: Path) -> None:
    path = tmp_path / "hitl.db"
    records = varied_trail(23, mangled=True)
    await _sqlite_store_with(path, records)
    # `hitl db archive` deletes whole requests' records, oldest first.
    gone = {f"r{number}" for number in range(150)}
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("DELETE FROM audit WHERE request_id = ?", [(request_id,) for request_id in gone])
    conn.close()

    await _agrees(path, [record for record in records if record.request_id not in gone])
