"""A store that is locked, full, read-only, foreign or newer: every face answers with the reason in one
line, writes nothing, and the reading commands keep working where SQLite lets them."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from mcp import Client

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import Gate
from hitl_mcp.server import build_server
from hitl_mcp.store.sqlite import SQLiteStore
from hitl_mcp.store.sqlite_schema import SCHEMA_VERSION
from tests.cli_in_process import hitl
from tests.test_cli import BUY, HITL, file_request
from tests.test_server import text

# Every reading command a person runs against a store.
READERS = [
    ["list"],
    ["show", "{id}"],
    ["audit", "verify"],
    ["audit", "export"],
    ["report"],
    ["notify", "status"],
]


def count(db: Path, table: str = "requests") -> int:
    with closing(sqlite3.connect(db)) as conn:
        found: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return found


@contextmanager
def locked(db: Path, mode: str = "IMMEDIATE") -> Iterator[None]:
    """Another process holds the store's write lock (a `BEGIN IMMEDIATE`, or `mode`: EXCLUSIVE keeps readers
    out too) until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            f"c.execute('BEGIN {mode}')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def with_busy_timeout(env: dict[str, str], seconds: float) -> dict[str, str]:
    config = Path(env["HITL_CONFIG"])
    lines = [line for line in config.read_text().splitlines() if not line.startswith("busy_timeout_seconds")]
    gate = lines.index("[gate]")
    lines.insert(gate + 1, f"busy_timeout_seconds = {seconds}")
    config.write_text("\n".join(lines))
    return env


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


async def test_a_locked_store_refuses_a_gated_call_with_the_reason_and_files_nothing(
    settings: Settings, gate: Gate
) -> None:
    await gate.file("buy_stock", BUY, "agent")
    quick = dataclasses.replace(settings, gate=settings.gate.model_copy(update={"busy_timeout_seconds": 0.2}))
    async with Client(build_server(quick, principal="agent")) as agent:
        with locked(settings.db_path):
            refused = await agent.call_tool("buy_stock", BUY)
            # Reading goes on beside the lock: WAL readers never wait for a writer.
            listed = await agent.call_tool("list_pending", {})

    assert refused.is_error
    assert text(refused).endswith("the store is locked by another process; nothing was filed")
    assert not listed.is_error and len((listed.structured_content or {})["requests"]) == 1
    assert count(settings.db_path) == 1


def test_the_cli_says_the_store_is_locked_and_readers_do_not_wait(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)
    with_busy_timeout(env, 0.2)

    with locked(settings.db_path):
        approved = hitl(env, "approve", request_id, "--as", "alice", "--yes")
        # With a minute's patience for the lock, readers would hang here if they took it.
        with_busy_timeout(env, 60)
        reads = [hitl(env, *(arg.format(id=request_id) for arg in args)) for args in READERS]

    assert approved.returncode == 7
    assert one_line(approved.stderr) == "hitl: the store is locked by another process; nothing was changed"
    for args, read in zip(READERS, reads, strict=True):
        assert read.returncode == 0, (args, read.stderr)
    assert request_id[:10] in reads[0].stdout
    assert hitl(env, "show", request_id, "--json").stdout.count('"status": "pending"') == 1


async def test_a_full_disk_refuses_a_gated_call_with_the_reason(gate: Gate) -> None:
    await gate.file("buy_stock", BUY, "agent")
    store = gate.store
    assert isinstance(store, SQLiteStore) and store._writer is not None
    # SQLite's own ceiling on the file's size, reached: the same SQLITE_FULL a full disk gives.
    await store._writer.run(
        lambda conn: conn.execute(
            f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}"
        )
    )
    async with Client(build_server(gate.settings, principal="agent", gate=gate)) as agent:
        big = {"to": "erin@example.org", "subject": "Report", "body": "x" * 90_000}
        refused = await agent.call_tool("send_email", big)

    assert refused.is_error
    assert text(refused).endswith("the disk is full; nothing was filed")
    assert count(gate.settings.db_path) == 1


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


def on_read_only_folder(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`hitl ARGS` where `folder` is mounted read-only (a bind mount in a namespace of its own): no one,
    root included, can write there."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", READ_ONLY_MOUNT, str(folder), HITL, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    not unshare_works(), reason="needs unshare (user and mount namespaces) for a read-only mount"
)
def test_reading_commands_work_on_a_read_only_store_and_writing_ones_say_why_not(
    tmp_path: Path, env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)
    before = settings.db_path.read_bytes()
    # Closed cleanly: no WAL index left, which a reader on a read-only folder could not create.
    assert not settings.db_path.with_name("hitl.db-shm").exists()

    reads = [on_read_only_folder(tmp_path, env, *(a.format(id=request_id) for a in args)) for args in READERS]
    approved = on_read_only_folder(tmp_path, env, "approve", request_id, "--as", "alice", "--yes")

    for args, read in zip(READERS, reads, strict=True):
        assert read.returncode == 0, (args, read.stderr)
    assert request_id[:10] in reads[0].stdout and "OK:" in reads[2].stdout
    assert approved.returncode == 7
    assert "the store is read-only" in one_line(approved.stderr)
    assert settings.db_path.read_bytes() == before


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 100)


def another_programs_database(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (id)")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (garbage, "is not a hitl store"),
        (another_programs_database, "is not a hitl store (an SQLite database with the tables users)"),
    ],
)
def test_a_file_that_is_not_a_hitl_store_is_refused_and_left_as_it_was(
    tmp_path: Path, env: dict[str, str], make: Callable[[Path], None], message: str
) -> None:
    foreign = tmp_path / "other.db"
    make(foreign)
    before = foreign.read_bytes()

    for args in (["list"], ["approve", "abc", "--yes"], ["serve"]):
        refused = hitl({**env, "HITL_DB": str(foreign)}, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in one_line(refused.stderr)
    assert foreign.read_bytes() == before


def test_a_store_written_by_a_newer_version_is_refused(env: dict[str, str], settings: Settings) -> None:
    file_request(settings, "buy_stock", BUY)
    with closing(sqlite3.connect(settings.db_path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    for args in (["list"], ["serve"]):
        refused = hitl(env, *args)
        assert refused.returncode == 2
        assert "written by a newer hitl-mcp" in one_line(refused.stderr)


def test_a_store_of_schema_1_is_upgraded_and_its_requests_still_run(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)
    with closing(sqlite3.connect(settings.db_path)) as conn:
        # What a store of the first schema holds: no target, effect or idempotency key, no application id.
        conn.execute("DROP INDEX requests_idempotency")
        conn.execute("DROP INDEX requests_pending_digest")
        for column in ("target", "effect", "idempotency_key"):
            conn.execute(f"ALTER TABLE requests DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("PRAGMA application_id = 0")

    approved = hitl(env, "approve", request_id, "--as", "alice", "--yes")

    assert approved.returncode == 0, approved.stderr
    assert f"{request_id} executed" in approved.stdout
    with closing(sqlite3.connect(settings.db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert load_settings(env).db_path == settings.db_path
