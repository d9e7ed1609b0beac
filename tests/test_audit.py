"""The hash-chained audit trail: `hitl audit verify` names the first tampered record; export filters.

Tampering is done the way an intruder would: straight into the SQLite file, behind the gate's back.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from hitl_mcp.actions import build_actions
from hitl_mcp.audit import GENESIS, AuditRecord, record_hash, verify
from hitl_mcp.config import Settings
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.store.sqlite import SQLiteStore
from tests.cli_in_process import hitl
from tests.test_cli import BUY, file_request

Row = tuple[Any, ...]


def trail(db: Path) -> list[Row]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT seq, request_id, event, actor, at, details, prev_hash, hash FROM audit ORDER BY seq"
        ).fetchall()


def tamper(db: Path, change: Callable[[sqlite3.Connection], object]) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        change(conn)


def renumber(conn: sqlite3.Connection, from_seq: int, by: int) -> None:
    """Shift every record from `from_seq` on by `by`, one at a time so no two ever share a seq."""
    seqs = [row[0] for row in conn.execute("SELECT seq FROM audit WHERE seq >= ? ORDER BY seq", (from_seq,))]
    for seq in sorted(seqs, reverse=by > 0):
        conn.execute("UPDATE audit SET seq = ? WHERE seq = ?", (seq + by, seq))


def history(env: dict[str, str], settings: Settings) -> list[str]:
    """Three requests; the first approved and run, the second rejected, the third left pending.

    The trail is then: 1-3 filed, 4 approved, 5 claimed, 6 executed, 7 rejected.
    """
    ids = [file_request(settings, "buy_stock", BUY) for _ in range(3)]
    assert hitl(env, "approve", ids[0], "--as", "alice", "--yes").returncode == 0
    assert hitl(env, "reject", ids[1], "--as", "bob", "--reason", "no").returncode == 0
    assert [row[2] for row in trail(settings.db_path)] == [
        "filed",
        "filed",
        "filed",
        "approved",
        "claimed",
        "executed",
        "rejected",
    ]
    return ids


def failure(env: dict[str, str]) -> str:
    checked = hitl(env, "audit", "verify")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    [line] = checked.stdout.splitlines()
    assert line.startswith("FAILED: ")
    return line


# -- the chain -----------------------------------------------------------------------------------


def test_a_clean_trail_verifies_and_names_its_head(env: dict[str, str], settings: Settings) -> None:
    history(env, settings)
    rows = trail(settings.db_path)

    checked = hitl(env, "audit", "verify")

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == f"OK: 7 records, head {rows[-1][7]}\n"
    assert [row[0] for row in rows] == list(range(1, 8))
    assert [row[6] for row in rows] == [GENESIS, *(row[7] for row in rows[:-1])]
    assert all(row[7] == record_hash(*row[6:7], *row[:6]) for row in rows)


async def test_an_empty_trail_verifies_with_the_genesis_head(env: dict[str, str], settings: Settings) -> None:
    async with open_gate(settings):
        pass

    checked = await anyio.to_thread.run_sync(lambda: hitl(env, "audit", "verify"))

    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"OK: 0 records, head {GENESIS}\n"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "mallory"),
        ("details", '{"level":0,"reason":"looked fine","status":"approved"}'),
        ("at", 0.0),
        ("request_id", "0000000000000000beef"),
    ],
)
def test_a_changed_record_is_named(
    env: dict[str, str], settings: Settings, column: str, value: object
) -> None:
    history(env, settings)
    tamper(
        settings.db_path, lambda conn: conn.execute(f"UPDATE audit SET {column} = ? WHERE seq = 4", (value,))
    )
    request_id = trail(settings.db_path)[3][1]

    line = failure(env)

    assert f"seq 4 (request {request_id}, approved by " in line
    assert "was changed: its contents do not match its hash" in line
    assert "(3 records before it are sound)" in line


def test_a_record_changed_and_rehashed_is_named_by_its_successor(
    env: dict[str, str], settings: Settings
) -> None:
    history(env, settings)
    seq, request_id, event, _, at, details, prev_hash, _ = trail(settings.db_path)[3]
    forged = record_hash(prev_hash, seq, request_id, event, "mallory", at, details)
    tamper(
        settings.db_path,
        lambda conn: conn.execute("UPDATE audit SET actor = 'mallory', hash = ? WHERE seq = 4", (forged,)),
    )

    line = failure(env)

    assert f"seq 4 (request {request_id}, approved by mallory) was changed and its hash recomputed" in line
    assert "seq 5 still links to its old hash" in line


def test_a_deleted_record_is_named(env: dict[str, str], settings: Settings) -> None:
    ids = history(env, settings)
    tamper(settings.db_path, lambda conn: conn.execute("DELETE FROM audit WHERE seq = 4"))

    line = failure(env)

    assert line.startswith(f"FAILED: seq 4 removed: seq 5 (request {ids[0]}, claimed by ")
    assert "follows seq 3" in line


def test_a_deleted_record_hidden_by_renumbering_is_named(env: dict[str, str], settings: Settings) -> None:
    ids = history(env, settings)

    def delete_and_close_the_gap(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM audit WHERE seq = 4")
        renumber(conn, 5, -1)

    tamper(settings.db_path, delete_and_close_the_gap)

    line = failure(env)

    assert line.startswith("FAILED: seq 4 removed: the records after it were renumbered to hide the gap")
    assert f"seq 4 (request {ids[0]}, claimed by" in line and "was seq 5" in line


def test_the_first_records_deleted_are_named(env: dict[str, str], settings: Settings) -> None:
    history(env, settings)
    tamper(settings.db_path, lambda conn: conn.execute("DELETE FROM audit WHERE seq <= 2"))

    line = failure(env)

    assert line.startswith("FAILED: seq 1–2 removed: seq 3 (request ")
    assert "follows the start of the trail" in line


@pytest.mark.parametrize("forger", ["careless", "careful"])
def test_a_record_inserted_out_of_order_is_named(
    env: dict[str, str], settings: Settings, forger: str
) -> None:
    """A forged approval slipped in before the real one; a careful forger even computes its hashes."""
    ids = history(env, settings)
    third = trail(settings.db_path)[2]
    at, details = third[4] + 1, '{"level":0,"status":"approved"}'
    # The careless forger links to the right record but makes the hash up.
    prev_hash = third[7]
    forged_hash = record_hash(prev_hash, 4, ids[2], "approved", "mallory", at, details)
    if forger == "careless":
        forged_hash = "f" * 64

    def forge(conn: sqlite3.Connection) -> None:
        renumber(conn, 4, +1)
        conn.execute(
            "INSERT INTO audit VALUES (4, ?, 'approved', 'mallory', ?, ?, ?, ?)",
            (ids[2], at, details, prev_hash, forged_hash),
        )

    tamper(settings.db_path, forge)

    line = failure(env)

    assert line.startswith(f"FAILED: seq 4 (request {ids[2]}, approved by mallory) was inserted")
    assert "(3 records before it are sound)" in line


def test_the_chain_survives_later_transitions_after_a_check(env: dict[str, str], settings: Settings) -> None:
    ids = history(env, settings)
    assert hitl(env, "audit", "verify").returncode == 0

    assert hitl(env, "approve", ids[2], "--as", "carol", "--yes").returncode == 0

    checked = hitl(env, "audit", "verify")
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith("OK: 10 records, head ")


def test_verify_streams_rows_given_directly(env: dict[str, str], settings: Settings) -> None:
    history(env, settings)
    records = [AuditRecord.from_row(row) for row in trail(settings.db_path)]

    sound = verify(iter(records))
    swapped = verify([records[0], records[2], records[1], *records[3:]])

    assert sound.ok and sound.records == 7 and sound.head == records[-1].hash
    assert swapped.broken is not None
    assert swapped.broken.kind == "removed" and swapped.broken.seq == 2
    assert swapped.records == 1 and swapped.head == records[0].hash


def test_a_missing_store_is_refused_and_not_created(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "hitl.db"

    for args in (["audit", "verify"], ["audit", "export"], ["report"]):
        refused = hitl({**env, "HITL_DB": str(missing)}, *args)
        assert refused.returncode == 2
        assert (
            refused.stderr
            == f"hitl: no store at {missing}; HITL_DB names the store file (the one `hitl serve` uses)\n"
        )
    assert not missing.parent.exists()


def test_a_file_that_is_not_a_store_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")

    refused = hitl({**env, "HITL_DB": str(other)}, "audit", "verify")

    assert refused.returncode == 1
    assert refused.stderr.startswith(f"hitl: cannot read the audit trail in {other}: no such table: audit")


# -- concurrent writers ---------------------------------------------------------------------------

FILER = """
import sys, anyio
from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate

async def main() -> None:
    async with open_gate(load_settings()) as gate:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(int(sys.argv[1])):
            await gate.file("buy_stock", {"symbol": "GOOGL", "quantity": i + 1, "price": 1.0}, "agent")

anyio.run(main)
"""


def test_processes_filing_at_once_keep_one_valid_chain(env: dict[str, str], settings: Settings) -> None:
    file_request(settings, "buy_stock", BUY)  # the store exists before the race starts
    filers = [
        subprocess.Popen(
            [sys.executable, "-c", FILER, "25"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    # A barrier: every filer has its gate open before any of them files.
    for filer in filers:
        assert filer.stdout is not None and filer.stdout.readline() == "ready\n"
    for filer in filers:
        assert filer.stdin is not None
        filer.stdin.write("go\n")
        filer.stdin.flush()
    for filer in filers:
        filer.communicate(timeout=60)
        assert filer.returncode == 0

    checked = hitl(env, "audit", "verify")

    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith("OK: 101 records, head ")
    assert [row[0] for row in trail(settings.db_path)] == list(range(1, 102))


async def test_two_gates_in_one_process_filing_at_once_keep_one_valid_chain(settings: Settings) -> None:
    async def file_many(gate: Gate) -> None:
        for i in range(30):
            await gate.file("buy_stock", {"symbol": "MSFT", "quantity": i + 1, "price": 1.0}, "agent")

    async with open_gate(settings) as first, open_gate(settings) as second, anyio.create_task_group() as tg:
        tg.start_soon(file_many, first)
        tg.start_soon(file_many, second)

    with closing(sqlite3.connect(settings.db_path)) as conn:
        result = verify(conn)
    assert result.ok, result.broken
    assert result.records == 60


# -- export --------------------------------------------------------------------------------------

# Long past, so that ages such as "1d" fall after every record whatever day the suite runs.
NOV_1 = datetime(2020, 11, 1, tzinfo=UTC).timestamp()


@asynccontextmanager
async def gate_at(settings: Settings, clock: list[float]) -> AsyncIterator[Gate]:
    """A gate whose clock the test sets, so records land at known times."""
    store = SQLiteStore(settings.db_path)
    await store.open()
    try:
        yield Gate(store, build_actions(settings.actions), settings, clock=lambda: clock[0])
    finally:
        await store.close()


def hourly_history(settings: Settings) -> list[str]:
    """Filed at 09:00, 10:00 and 11:00 UTC on 1 November 2020; the last rejected at 11:30.

    The trail is then: 1-3 filed, 4 rejected.
    """

    async def run() -> list[str]:
        clock = [NOV_1]
        ids = []
        async with gate_at(settings, clock) as gate:
            for hour in (9, 10, 11):
                clock[0] = NOV_1 + hour * 3600
                ids.append((await gate.file("buy_stock", BUY, "agent")).request_id)
            clock[0] = NOV_1 + 11.5 * 3600
            await gate.reject(ids[2], "bob", "too big")
        return ids

    return anyio.run(run)


def test_export_as_jsonl_writes_every_record_and_can_be_rechecked(
    env: dict[str, str], settings: Settings
) -> None:
    ids = hourly_history(settings)

    exported = hitl(env, "audit", "export")

    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(r["seq"], r["request_id"], r["event"]) for r in lines] == [
        (1, ids[0], "filed"),
        (2, ids[1], "filed"),
        (3, ids[2], "filed"),
        (4, ids[2], "rejected"),
    ]
    assert lines[3]["at"] == "2020-11-01T11:30:00.000000+00:00"
    assert lines[3]["actor"] == "bob" and lines[3]["details"]["reason"] == "too big"
    assert [r["hash"] for r in lines] == [row[7] for row in trail(settings.db_path)]
    # The export carries everything the hashes cover, so the chain can be re-checked away from the store.
    records = [
        AuditRecord(
            r["seq"],
            r["request_id"],
            r["event"],
            r["actor"],
            r["at_unix"],
            json.dumps(r["details"]),
            r["prev_hash"],
            r["hash"],
        )
        for r in lines
    ]
    assert verify(records).ok


def test_export_as_csv_with_since_and_until(env: dict[str, str], settings: Settings) -> None:
    ids = hourly_history(settings)

    exported = hitl(
        env,
        "audit",
        "export",
        "--format",
        "csv",
        "--since",
        "2020-11-01T10:00",
        "--until",
        "2020-11-01T11:30",
    )

    assert exported.returncode == 0, exported.stderr
    header, *rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert header == ["seq", "request_id", "event", "actor", "at", "at_unix", "details", "prev_hash", "hash"]
    assert [(row[0], row[1], row[2], row[4]) for row in rows] == [
        ("2", ids[1], "filed", "2020-11-01T10:00:00.000000+00:00"),
        ("3", ids[2], "filed", "2020-11-01T11:00:00.000000+00:00"),
    ]
    assert json.loads(rows[0][6])["tool"] == "buy_stock"


@pytest.mark.parametrize(
    ("args", "seqs"),
    [
        (["--since", "2020-11-01T11:00:00+00:00"], [3, 4]),
        (["--since", "2020-11-01T12:00:00+01:00"], [3, 4]),
        (["--since", "2020-11-01T11:00:00.000001Z"], [4]),
        (["--until", "2020-11-01"], []),
        (["--until", "2020-11-02"], [1, 2, 3, 4]),
        (["--since", "1d"], []),
        (["--until", "1d"], [1, 2, 3, 4]),
        (["--request", "{last}"], [3, 4]),
        (["--request", "{last}", "--since", "2020-11-01T11:15"], [4]),
    ],
)
def test_export_filters(env: dict[str, str], settings: Settings, args: list[str], seqs: list[int]) -> None:
    ids = hourly_history(settings)

    exported = hitl(env, "audit", "export", *[arg.format(last=ids[2][:6]) for arg in args])

    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["seq"] for line in exported.stdout.splitlines()] == seqs


def test_export_of_recent_records_by_age(env: dict[str, str], settings: Settings) -> None:
    file_request(settings, "buy_stock", BUY)

    recent = hitl(env, "audit", "export", "--since", "30m")
    older = hitl(env, "audit", "export", "--until", "12h")

    assert len(recent.stdout.splitlines()) == 1
    assert older.returncode == 0 and older.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "Invalid value for '--since': 'last tuesday' is not a time"),
        (["--until", "2026-13-01"], "Invalid value for '--until': '2026-13-01' is not a time"),
        (["--since", "7x"], "Invalid value for '--since'"),
        (["--since", "2026-11-02", "--until", "2026-11-01"], "Invalid value for '--until': must be later"),
        (["--format", "xml"], "Invalid value for '--format'"),
        (["--request", "ab*"], "Invalid value for '--request': 'ab*' is not a request id"),
    ],
)
def test_export_refuses_bad_options_naming_them(
    env: dict[str, str], settings: Settings, args: list[str], message: str
) -> None:
    file_request(settings, "buy_stock", BUY)

    refused = hitl(env, "audit", "export", *args)

    assert refused.returncode == 2
    assert message in refused.stderr
    assert refused.stdout == ""


def test_export_of_an_unknown_request_is_refused(env: dict[str, str], settings: Settings) -> None:
    file_request(settings, "buy_stock", BUY)

    refused = hitl(env, "audit", "export", "--request", "ffffffffff")

    assert refused.returncode == 3
    assert "--request: no audit records for a request id starting 'ffffffffff'" in refused.stderr
