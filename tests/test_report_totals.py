"""The report's running totals in a SQLite store, counted per hour of filing (schema 8): over a trail that
spans many hours, under windows that start inside an hour or on its edge, after requests leave in any
order, and in a store upgraded from the per-request tables of schema 7 — always the figures `build`
computes from the same records."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hitl_mcp.audit import AuditRecord
from hitl_mcp.report import build, from_store
from hitl_mcp.store import sqlite_report
from hitl_mcp.store.sqlite import SQLiteStore
from tests.test_report_store import drop_running_totals, varied_trail, windows

HOUR = 3600.0
# 2026-11-30 00:00 UTC, an hour's start, so the windows below fall on hour edges as well as inside hours.
START = 1_796_000_400.0
SCHEMA_7 = Path(__file__).with_name("report_schema7.sql")


def over_hours(seed: int) -> list[AuditRecord]:
    """The varied trail stretched over about thirteen hours: a request's later records often fall in a
    later hour than its first, and some hours file nothing."""
    return [
        AuditRecord(r.seq, r.request_id, r.event, r.actor, START + (r.at - 1000.0) * 90, r.details, "", "")
        for r in varied_trail(seed, mangled=True)
    ]


def hour_windows(records: list[AuditRecord]) -> list[float | None]:
    ats = sorted(record.at for record in records)
    edges = [START + hours * HOUR for hours in (0, 1, 5, 12)]
    return [*windows(records), *edges, edges[2] - 0.001, edges[2] + 0.001, ats[len(ats) // 4]]


def _insert(path: Path, records: list[AuditRecord]) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.seq, r.request_id, r.event, r.actor, r.at, r.details, "", "") for r in records],
        )
    conn.close()


async def _new_store(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()


async def _agrees(path: Path, records: list[AuditRecord], since: list[float | None]) -> None:
    store = SQLiteStore(path, readonly=True)
    await store.open()
    try:
        for start in since:
            assert (await from_store(store, start)).to_json() == build(records, start).to_json(), start
    finally:
        await store.close()


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_a_trail_over_many_hours_reports_as_build_does_from_any_window(tmp_path: Path) -> None:
    path = tmp_path / "hitl.db"
    records = over_hours(30)
    await _new_store(path)
    _insert(path, records)
    buckets = {int(record.at // HOUR) for record in records}
    assert len(buckets) > 10  # the windows below cut the trail at many hours
    await _agrees(path, records, hour_windows(records))


async def test_requests_deleted_in_any_order_take_exactly_their_counts(tmp_path: Path) -> None:
    path = tmp_path / "hitl.db"
    records = over_hours(31)
    await _new_store(path)
    _insert(path, records)
    rng = random.Random(31)
    gone = {f"r{number}" for number in rng.sample(range(400), 170)}
    doomed = [record.seq for record in records if record.request_id in gone]
    rng.shuffle(doomed)  # a request's first record may leave before or after its others
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("DELETE FROM audit WHERE seq = ?", [(seq,) for seq in doomed])
    conn.close()
    kept = [record for record in records if record.request_id not in gone]
    await _agrees(path, kept, hour_windows(kept))


@pytest.mark.parametrize("newest_first", [True, False])
async def test_an_archived_prefix_leaves_the_rest_counted_and_no_zero_rows(
    tmp_path: Path, newest_first: bool
) -> None:
    path = tmp_path / "hitl.db"
    records = over_hours(32)[:-1]  # without the late record of the first request, which holds all back
    await _new_store(path)
    _insert(path, records)
    # `hitl db archive` deletes a prefix of the trail holding whole requests.
    last: dict[str, int] = {}
    for record in records:
        last[record.request_id] = record.seq
    first_seen: dict[str, int] = {}
    cut = 0
    for record in records:
        if record.request_id:  # notices (no request) leave with the prefix they are in
            first_seen.setdefault(record.request_id, record.seq)
        if record.seq >= len(records) // 2 and all(
            last[request_id] <= record.seq for request_id in first_seen
        ):
            cut = record.seq
            break
    assert cut
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    if newest_first:  # as `hitl db archive` deletes (sqlite_archive)
        conn.executemany("DELETE FROM audit WHERE seq = ?", [(seq,) for seq in range(cut, 0, -1)])
    else:
        conn.execute("DELETE FROM audit WHERE seq <= ?", (cut,))
    sqlite_report.prune(conn)
    conn.execute("COMMIT")
    conn.close()
    kept = [record for record in records if record.seq > cut]
    await _agrees(path, kept, hour_windows(kept))
    assert _rows(path, "SELECT * FROM report_totals WHERE n = 0") == []
    assert _rows(path, "SELECT * FROM report_waits WHERE n = 0") == []


async def test_a_schema_7_store_upgrades_to_the_same_report(tmp_path: Path) -> None:
    path = tmp_path / "hitl.db"
    records = over_hours(33)
    await _new_store(path)
    # The store as schema 7 made it: its per-request tables and triggers, filled as the records went in.
    conn = sqlite3.connect(path)
    with conn:
        drop_running_totals(conn)
        for statement in SCHEMA_7.read_text(encoding="utf-8").split("\n--;\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    _insert(path, records)
    assert _rows(path, "SELECT count(*) FROM report_requests")[0][0] > 300

    store = SQLiteStore(path)  # opening for writing upgrades it
    await store.open()
    await store.close()

    names = {row[0] for row in _rows(path, "SELECT name FROM sqlite_master")}
    assert not {"report_requests", "report_events", "report_votes"} & names
    assert {"report_totals", "report_waits", "report_buckets", "audit_notices"} <= names
    assert _rows(path, "PRAGMA user_version") == [(8,)]
    await _agrees(path, records, hour_windows(records))
    # The upgraded store's triggers keep counting what is written after the upgrade.
    more = [
        AuditRecord(len(records) + 1, "late", "filed", "agent", records[-1].at + 5, '{"tool": "t"}', "", ""),
        AuditRecord(len(records) + 2, "late", "rejected", "bob", records[-1].at + 9, "{}", "", ""),
    ]
    _insert(path, more)
    await _agrees(path, records + more, hour_windows(records + more))


async def test_the_totals_take_a_few_rows_an_hour_not_rows_per_request(tmp_path: Path) -> None:
    path = tmp_path / "hitl.db"
    await _new_store(path)
    records: list[AuditRecord] = []
    for number in range(2000):
        at = START + number * 1.5  # within the hour, each waiting its own time to approval
        for event, offset, details in (
            ("filed", 0.0, '{"tool": "buy_stock"}'),
            ("approved", 0.5 + number / 1000, '{"status": "approved"}'),
            ("claimed", 1.0 + number / 1000, "{}"),
            ("executed", 1.1 + number / 1000, "{}"),
        ):
            records.append(
                AuditRecord(len(records) + 1, f"q{number}", event, "alice", at + offset, details, "", "")
            )
    _insert(path, records)
    await _agrees(path, records, [None, START + 600])
    size = dict(_rows(path, "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
    # Schema 7 kept about 380 bytes a request here; the counts of an hour fit in a page or two, and each
    # distinct wait is one short row of the waits' table.
    ((page,),) = _rows(path, "PRAGMA page_size")
    assert size["report_totals"] + size["report_buckets"] <= 2 * page
    assert size["report_waits"] / 2000 < 32


async def test_records_copied_in_any_order_count_as_the_trail_in_seq_order(tmp_path: Path) -> None:
    # hitl appends; a trail copied or repaired may not arrive in seq order, and still counts as the trail.
    path = tmp_path / "hitl.db"
    records = over_hours(34)
    await _new_store(path)
    shuffled = list(records)
    random.Random(34).shuffle(shuffled)
    _insert(path, shuffled)
    await _agrees(path, records, hour_windows(records))
