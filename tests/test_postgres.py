"""The PostgreSQL store beyond the contract: wake-ups across servers, the chain under concurrent writers,
tampering in the database, schema versions, the driver's absence, and moving an SQLite store across."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from hitl_mcp.audit import GENESIS
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.notify.worker import DeliveryPolicy
from hitl_mcp.store import postgres_schema, wait_for_change
from hitl_mcp.store.postgres import PostgresStore
from tests.cli_in_process import hitl
from tests.environment import process_env
from tests.test_audit import FILER
from tests.test_cli import BUY, file_request
from tests.test_notify import BIG_BUY, GOVERNANCE, Receiver, delivering, receiver
from tests.test_notify import hitl as notify_hitl
from tests.test_store_contract import new
from tests.test_store_faults import one_line

__all__ = ["receiver"]  # the HTTP receiver fixture of tests/test_notify.py


@pytest.fixture
def pg_env(tmp_path: Path, config_file: Path, pg_url: str) -> dict[str, str]:
    return {**process_env(tmp_path, config_file), "HITL_DB": pg_url}


@pytest.fixture
def pg_settings(pg_env: dict[str, str]) -> Settings:
    return load_settings(pg_env)


async def sql(url: str, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


# -- across servers ------------------------------------------------------------------------------


async def test_a_commit_by_another_server_wakes_a_waiter_within_milliseconds(pg_url: str) -> None:
    waiter, writer = PostgresStore(pg_url), PostgresStore(pg_url)
    await waiter.open()
    await writer.open()
    latencies: list[float] = []
    try:
        for number in range(100):
            before = await waiter.change_counter()
            woke = anyio.Event()

            async def wait(before: int = before, woke: anyio.Event = woke) -> None:
                # No polling: the waiter sleeps on the event its LISTEN connection sets.
                await wait_for_change(waiter, before, 5.0, poll=60.0)
                woke.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(wait)
                await anyio.sleep(0.005)
                started = time.perf_counter()
                await writer.insert(new(f"w{number}"))
                await woke.wait()
                latencies.append(time.perf_counter() - started)
    finally:
        await writer.close()
        await waiter.close()

    latencies.sort()
    # Nearest rank: of 100 samples, p99 is the 99th, so one stray scheduling hiccup does not decide it.
    p50, p99 = (
        latencies[math.ceil(0.50 * len(latencies)) - 1],
        latencies[math.ceil(0.99 * len(latencies)) - 1],
    )
    # From before the insert to the wake-up, so this includes the insert's own commit.
    assert p50 < 0.050 and p99 < 0.150, (p50, p99)


def test_processes_filing_at_once_keep_one_valid_chain(pg_env: dict[str, str], pg_settings: Settings) -> None:
    file_request(pg_settings, "buy_stock", BUY)
    filers = [
        subprocess.Popen(
            [sys.executable, "-c", FILER, "25"],
            env=pg_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for filer in filers:
        assert filer.stdout is not None and filer.stdout.readline() == "ready\n"
    for filer in filers:
        assert filer.stdin is not None
        filer.stdin.write("go\n")
        filer.stdin.flush()
    for filer in filers:
        filer.communicate(timeout=60)
        assert filer.returncode == 0

    checked = hitl(pg_env, "audit", "verify")

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("OK: 101 records, head ")


# -- the audit trail in the database ---------------------------------------------------------------


RESTATED = '{"level":0,"reason":"looked fine","status":"approved"}'


def history(env: dict[str, str], settings: Settings) -> list[str]:
    """As tests/test_audit.py's: 1-3 filed, 4 approved, 5 claimed, 6 executed, 7 rejected."""
    ids = [file_request(settings, "buy_stock", BUY) for _ in range(3)]
    assert hitl(env, "approve", ids[0], "--as", "alice", "--yes").returncode == 0
    assert hitl(env, "reject", ids[1], "--as", "bob", "--reason", "no").returncode == 0
    return ids


@pytest.mark.parametrize(
    ("tampering", "expected"),
    [
        (
            "UPDATE audit SET actor = 'mallory' WHERE seq = 4",
            "seq 4 (request {id}, approved by mallory) was changed",
        ),
        (
            f"UPDATE audit SET details = '{RESTATED}' WHERE seq = 4",
            "seq 4 (request {id}",
        ),
        ("DELETE FROM audit WHERE seq = 4", "seq 4 removed"),
    ],
)
def test_tampering_done_in_the_database_is_named(
    pg_env: dict[str, str], pg_settings: Settings, pg_url: str, tampering: str, expected: str
) -> None:
    ids = history(pg_env, pg_settings)
    sound = hitl(pg_env, "audit", "verify")
    assert sound.returncode == 0 and sound.stdout.startswith("OK: 7 records, head "), sound.stdout

    anyio.run(sql, pg_url, tampering)
    checked = hitl(pg_env, "audit", "verify")

    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stdout.startswith("FAILED: ") and expected.format(id=ids[0]) in checked.stdout


def test_export_and_report_read_the_postgresql_trail(pg_env: dict[str, str], pg_settings: Settings) -> None:
    ids = history(pg_env, pg_settings)

    exported = hitl(pg_env, "audit", "export", "--request", ids[0][:8])
    report = hitl(pg_env, "report", "--json")

    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["event"] for line in exported.stdout.splitlines()] == [
        "filed",
        "approved",
        "claimed",
        "executed",
    ]
    figures = json.loads(report.stdout)
    assert figures["requests"] == 3 and figures["approval"] == {
        "approved": 1,
        "rejected": 1,
        "decided": 2,
        "rate": 0.5,
    }


# -- schema versions and the driver ------------------------------------------------------------------


def test_an_empty_database_is_created_by_db_upgrade_and_a_newer_one_refused(
    tmp_path: Path, config_file: Path, pg_empty_url: str
) -> None:
    env = {**process_env(tmp_path, config_file), "HITL_DB": pg_empty_url}

    before = hitl(env, "list")
    created = hitl(env, "db", "upgrade")
    again = hitl(env, "db", "upgrade")
    status = hitl(env, "db", "status", "--json")

    assert before.returncode == 2 and "holds no hitl store yet" in one_line(before.stderr)
    assert "`hitl db upgrade`" in before.stderr
    assert created.returncode == 0 and f"created, schema {postgres_schema.SCHEMA_VERSION}" in created.stdout
    assert again.returncode == 0 and "already current" in again.stdout
    assert json.loads(status.stdout)["current"] is True
    assert hitl(env, "list").returncode == 0

    newer = postgres_schema.SCHEMA_VERSION + 1
    anyio.run(sql, pg_empty_url, "INSERT INTO hitl_migrations (version, name) VALUES ($1, 'future')", newer)
    for args in (["list"], ["serve"], ["db", "upgrade"]):
        refused = hitl(env, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert f"written by a newer hitl-mcp (schema {newer}" in one_line(refused.stderr)


def test_another_programs_database_is_refused_and_left_alone(
    tmp_path: Path, config_file: Path, pg_empty_url: str
) -> None:
    env = {**process_env(tmp_path, config_file), "HITL_DB": pg_empty_url}
    anyio.run(sql, pg_empty_url, "CREATE TABLE users (id int)")

    for args in (["list"], ["db", "upgrade"]):
        refused = hitl(env, *args)
        assert refused.returncode == 2
        assert "is not a hitl store (a PostgreSQL database with the tables users)" in one_line(refused.stderr)


NO_DRIVER = """
import sys
sys.modules["asyncpg"] = None  # as if the extra were not installed
from hitl_mcp.cli import main
main([*sys.argv[1:]])
"""


def test_without_the_driver_the_server_says_which_extra_to_install(pg_env: dict[str, str]) -> None:
    for args in (["serve"], ["list"], ["db", "upgrade"]):
        done = subprocess.run(
            [sys.executable, "-c", NO_DRIVER, *args],
            env=pg_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert one_line(done.stderr) == (
            "hitl: HITL_DB: a PostgreSQL store needs its driver, which is not installed: "
            "pip install 'asyncpg>=0.30' into hitl's environment"
        )


# -- moving an SQLite store across ---------------------------------------------------------------------


def test_migrate_copies_an_sqlite_store_whose_copy_verifies_with_the_same_head(
    env: dict[str, str], settings: Settings, pg_empty_url: str
) -> None:
    history(env, settings)
    edited = file_request(settings, "buy_stock", {"symbol": "EDIT", "quantity": 1, "price": 1e-4})
    assert hitl(env, "approve", edited, "--as", "alice", "--yes", "--set", "quantity=2").returncode == 0
    # An agent's text with NUL and bidi controls in it, which PostgreSQL's text type cannot hold as is.
    file_request(
        settings, "delete_database_records", {"table": "users", "condition": "email = 'x\u202e\x00'"}
    )
    original = hitl(env, "audit", "verify")
    listed = hitl(env, "list", "--all", "--json")
    with closing(sqlite3.connect(settings.db_path)) as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("requests", "decisions", "audit")
        ]
    pg = {**env, "HITL_DB": pg_empty_url}

    moved = hitl(env, "db", "migrate", "--to", pg_empty_url)
    again = hitl(env, "db", "migrate", "--to", pg_empty_url)

    assert moved.returncode == 0, moved.stderr
    assert f"copying audit: {counts[2]} of {counts[2]}" in moved.stderr  # progress, on stderr
    requests, decisions, records = counts
    assert f"copied {requests} requests, {decisions} decisions, {records} audit records" in moved.stdout
    assert "(the same as the source's)" in moved.stdout
    copy = hitl(pg, "audit", "verify")
    assert original.returncode == copy.returncode == 0
    assert copy.stdout == original.stdout and original.stdout.startswith(f"OK: {records} records, head ")
    assert hitl(pg, "list", "--all", "--json").stdout == listed.stdout
    assert again.returncode == 2 and f"is not empty ({requests} requests" in one_line(again.stderr)

    # The copy goes on where the original stopped: new requests, decisions and records follow on.
    pending = json.loads(hitl(pg, "list", "--json", "--tool", "buy_stock").stdout)
    assert len(pending) == 1
    approved = hitl(pg, "approve", pending[0]["request_id"], "--as", "alice", "--yes")
    assert approved.returncode == 0, approved.stderr
    assert hitl(pg, "audit", "verify").stdout.startswith(f"OK: {records + 3} records")


def test_migrate_refuses_anything_but_an_sqlite_source_and_a_postgresql_target(
    env: dict[str, str], settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    file_request(settings, "buy_stock", BUY)

    to_file = hitl(env, "db", "migrate", "--to", str(tmp_path / "other.db"))
    from_pg = hitl({**env, "HITL_DB": pg_url}, "db", "migrate", "--to", pg_url)

    assert to_file.returncode == 2 and "is not a PostgreSQL URL" in one_line(to_file.stderr)
    assert from_pg.returncode == 2 and "--from PATH" in one_line(from_pg.stderr)


async def test_an_empty_store_has_the_genesis_head(pg_url: str) -> None:
    store = PostgresStore(pg_url, readonly=True)
    await store.open()
    try:
        assert await store.audit_head() == (0, GENESIS)
    finally:
        await store.close()


# -- notifications from several servers -----------------------------------------------------------------


@pytest.fixture
def notifying_env(pg_env: dict[str, str], config_file: Path, receiver: Receiver) -> dict[str, str]:
    """`pg_env` with a config that posts every filing to the receiver."""
    path = config_file.with_name("notify.toml")
    notify = f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/hook")}"\n'
    path.write_text(config_file.read_text(encoding="utf-8") + GOVERNANCE + notify, encoding="utf-8")
    return {**pg_env, "HITL_CONFIG": str(path)}


async def test_delivery_workers_of_several_servers_send_each_notification_once(
    notifying_env: dict[str, str], receiver: Receiver
) -> None:
    env = notifying_env
    settings = load_settings(env)
    policy = DeliveryPolicy(
        batch=2, poll_seconds=0.005, idle_seconds=0.1, timeout_seconds=5, lease_seconds=10
    )
    async with (
        open_gate(settings) as one,
        open_gate(settings) as two,
        open_gate(settings) as three,
        delivering(one, policy),
        delivering(two, policy),
        delivering(three, policy),
    ):
        for index in range(30):
            await (one, two, three)[index % 3].file("buy_stock", BIG_BUY, "agent")
        await receiver.wait_ok("/hook", 30)
        status: dict[str, Any] = {}

        async def delivered() -> bool:
            code, out, _ = await notify_hitl(env, "notify", "status", "--json")
            status.update(json.loads(out) if code == 0 else {})
            return bool(status.get("counts", {}).get("delivered") == 30)

        for _ in range(100):
            if await delivered():
                break
            await anyio.sleep(0.2)

    assert Counter(hit.delivery for hit in receiver.attempts("/hook")) == {str(n): 1 for n in range(1, 31)}
    assert status["counts"] == {"pending": 0, "delivered": 30, "dead": 0}
