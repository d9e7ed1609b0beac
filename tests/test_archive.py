"""`hitl db archive` and `hitl audit verify` across an archive: finished requests leave the store for a file,
open ones never do, and the audit chain stays verifiable — a byte changed in the file or the store shows."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.store.archive import backend
from tests.cli_in_process import hitl
from tests.clock import Clock
from tests.environment import process_env
from tests.test_cli import BUY, HITL

DAY = 86_400.0
NOW = time.time()
OLD = NOW - 40 * DAY
CUTOFF = "20d"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path, config_file: Path) -> dict[str, str]:
    """The environment of `hitl` processes on this test's store: an SQLite file, or a fresh PostgreSQL
    database."""
    env = process_env(tmp_path, config_file)
    if request.param == "postgresql":
        env["HITL_DB"] = request.getfixturevalue("pg_url")
    return env


def history(settings: Settings, *, today: bool = True, rejecter: str = "bob") -> dict[str, str]:
    """Requests filed 40 days ago, interleaved in the chain: old-rejected, old-cancelled (finished at once),
    old-open (still pending: it holds back the archive), late-rejected (finished at once, but filed after
    old-open); and with `today`, one filed and rejected today."""

    async def run() -> dict[str, str]:
        clock = Clock(OLD)
        async with open_gate(settings) as gate:
            gate.clock = clock
            ids = {}
            rejected = await gate.file("buy_stock", {**BUY, "quantity": 1}, "agent")
            await gate.reject(rejected.request_id, rejecter, "too risky")
            ids["old-rejected"] = rejected.request_id
            cancelled = await gate.file("buy_stock", {**BUY, "quantity": 2}, "agent")
            await gate.cancel(cancelled.request_id, "agent")
            ids["old-cancelled"] = cancelled.request_id
            clock.now += 60
            still_open = await gate.file("buy_stock", {**BUY, "quantity": 5}, "agent")
            ids["old-open"] = still_open.request_id
            clock.now += 60
            late = await gate.file("buy_stock", {**BUY, "quantity": 3}, "agent")
            await gate.reject(late.request_id, rejecter, "no")
            ids["late-rejected"] = late.request_id
        if today:
            ids["today"] = await filed_today(settings)
        return ids

    return anyio.run(run)


async def filed_today(settings: Settings) -> str:
    async with open_gate(settings) as gate:
        request = await gate.file("buy_stock", {**BUY, "quantity": 4}, "agent")
        await gate.reject(request.request_id, "bob", "no")
        return request.request_id


def sweep(settings: Settings) -> None:
    """Housekeeping, as a server does it: the request left open expires, today."""

    async def run() -> None:
        async with open_gate(settings) as gate:
            assert await gate.sweep() == 1

    anyio.run(run)


def rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="ascii") as file:
        for line in file:
            yield json.loads(line)


def archived_ids(path: Path) -> set[str]:
    return {row["request"]["id"] for row in rows(path) if "request" in row}


def archive(env: dict[str, str], to: Path, before: str = CUTOFF) -> subprocess.CompletedProcess[str]:
    return hitl(env, "db", "archive", "--before", before, "--to", str(to))


def test_finished_requests_leave_and_the_first_open_one_holds_back_the_rest(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(store_env)
    ids = history(settings, today=False)
    first = tmp_path / "first.jsonl"

    done = archive(store_env, first)

    assert done.returncode == 0, done.stderr
    assert "archived 2 requests, 1 decision and 4 audit records (seq 1–4)" in done.stdout
    assert f"stopped at seq 5: request {ids['old-open']} is pending" in done.stdout
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert archived_ids(first) == {ids["old-rejected"], ids["old-cancelled"]}
    # Gone from the store, and only those: the late one waits behind the open one.
    assert hitl(store_env, "show", ids["old-rejected"]).returncode == 3
    for kept in ("old-open", "late-rejected"):
        assert hitl(store_env, "show", ids[kept]).returncode == 0
    verified = hitl(store_env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout
    assert "after the archive checkpoint (seq 4)" in verified.stdout

    # Once the open request is settled (expired by housekeeping today), a run up to tomorrow takes it, the
    # late one and the first run's own record: the whole trail. The next record chains on regardless.
    sweep(settings)
    second = tmp_path / "second.jsonl"
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(NOW + DAY))
    done = archive(store_env, second, before=tomorrow)
    assert done.returncode == 0, done.stderr
    assert archived_ids(second) == {ids["old-open"], ids["late-rejected"]}
    ids["today"] = anyio.run(filed_today, settings)
    assert hitl(store_env, "show", ids["today"]).returncode == 0

    whole = hitl(store_env, "audit", "verify", "--archive", str(second), "--archive", str(first))
    assert whole.returncode == 0, whole.stdout
    lines = whole.stdout.splitlines()
    assert lines[0].startswith(f"OK: archive {first}: seq 1–4, 2 requests")
    assert lines[1].startswith(f"OK: archive {second}: seq 5–")
    assert lines[2].startswith("OK: ") and "after the archive checkpoint" in lines[2]


def test_nothing_finished_before_the_date_leaves_nothing(store_env: dict[str, str], tmp_path: Path) -> None:
    history(load_settings(store_env))
    target = tmp_path / "none.jsonl"

    done = archive(store_env, target, before="60d")

    assert done.returncode == 0, done.stderr
    assert "nothing to archive before 60d" in done.stdout
    assert not target.exists()


def test_an_existing_file_is_never_overwritten(store_env: dict[str, str], tmp_path: Path) -> None:
    history(load_settings(store_env))
    target = tmp_path / "taken.jsonl"
    target.write_text("someone's notes\n", encoding="utf-8")

    done = archive(store_env, target)

    assert done.returncode == 2
    assert "--to:" in done.stderr and "exists" in done.stderr
    assert target.read_text(encoding="utf-8") == "someone's notes\n"
    assert "records, head" in hitl(store_env, "audit", "verify").stdout


def flip(path: Path, old: bytes, new: bytes, *, last: bool = False) -> None:
    """Change the first (or the last) place `old` is in the file."""
    data = path.read_bytes()
    assert old in data, old
    head, _, tail = data.rpartition(old) if last else data.partition(old)
    path.write_bytes(head + new + tail)


def test_one_byte_changed_in_the_archive_is_found(store_env: dict[str, str], tmp_path: Path) -> None:
    history(load_settings(store_env))
    target = tmp_path / "archive.jsonl"
    assert archive(store_env, target).returncode == 0
    pristine = target.read_bytes()

    # The decision's row (the file's last line): covered by no hash of the chain, only by the file's digest
    # in the store.
    flip(target, b"too risky", b"too riskz", last=True)
    found = hitl(store_env, "audit", "verify", "--archive", str(target))
    assert found.returncode == 1
    assert f"FAILED: archive {target}: its SHA-256 is" in found.stdout
    assert "it was changed" in found.stdout

    # An audit record's actor: the file's own chain shows it, even without the store.
    target.write_bytes(pristine)
    flip(target, b'"actor":"bob"', b'"actor":"bog"')
    found = hitl(store_env, "audit", "verify", "--archive", str(target))
    assert found.returncode == 1
    assert (
        "FAILED: archive" in found.stdout
        and "was changed: its contents do not match its hash" in found.stdout
    )

    target.write_bytes(pristine)
    assert hitl(store_env, "audit", "verify", "--archive", str(target)).returncode == 0


async def _execute(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def tamper(env: dict[str, str], sql: str) -> None:
    db = env["HITL_DB"]
    if db.startswith("postgresql"):
        anyio.run(_execute, db, sql)
        return
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute(sql)
    conn.close()


def test_one_byte_changed_in_the_store_after_an_archive_is_found(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    history(load_settings(store_env))
    target = tmp_path / "archive.jsonl"
    assert archive(store_env, target).returncode == 0

    # The first record left in the store.
    tamper(store_env, "UPDATE audit SET actor = 'agenT' WHERE seq = 5")
    found = hitl(store_env, "audit", "verify")
    assert found.returncode == 1
    assert "FAILED: seq 5" in found.stdout and "was changed" in found.stdout
    tamper(store_env, "UPDATE audit SET actor = 'agent' WHERE seq = 5")
    assert hitl(store_env, "audit", "verify").returncode == 0

    # The checkpoint itself, moved to hide the records after it.
    tamper(store_env, "UPDATE archives SET through_hash = '" + "f" * 64 + "'")
    found = hitl(store_env, "audit", "verify", "--archive", str(target))
    assert found.returncode == 1
    assert "does not link to the archive checkpoint (seq 4)" in found.stdout


def test_an_archive_killed_before_its_commit_is_run_again_without_loss_or_duplicates(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    history(load_settings(store_env))
    target = tmp_path / "archive.jsonl"
    before = hitl(store_env, "audit", "verify").stdout

    process = subprocess.Popen(
        [HITL, "db", "archive", "--before", CUTOFF, "--to", str(target)],
        env={**store_env, "HITL_TEST_PAUSE_AT": "archive-written"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        while line and not line.startswith("hitl-test-pause:"):
            line = process.stderr.readline()
        assert line.startswith("hitl-test-pause: archive-written"), line
        # The file is whole on disk; the store has not been touched yet. Now the process dies.
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    assert target.exists()
    assert hitl(store_env, "audit", "verify").stdout == before
    leftover = hitl(store_env, "audit", "verify", "--archive", str(target))
    assert leftover.returncode == 1
    assert "records no archive of seq 1–4: the leftover of an interrupted" in leftover.stdout

    again = archive(store_env, target)
    assert again.returncode == 0, again.stderr
    assert "(seq 1–4)" in again.stdout
    whole = hitl(store_env, "audit", "verify", "--archive", str(target))
    assert whole.returncode == 0, whole.stdout
    seqs = [row["audit"]["seq"] for row in rows(target) if "audit" in row]
    assert seqs == [1, 2, 3, 4]


def test_a_server_archives_daily_into_its_folder_with_the_same_checks(
    store_env: dict[str, str], config_file: Path, tmp_path: Path
) -> None:
    text = config_file.read_text(encoding="utf-8")
    config_file.write_text(text + '\n[store]\narchive_after_days = 20\narchive_dir = "archives"\n', "utf-8")
    settings = load_settings(store_env)
    assert settings.store_options.archive_dir == tmp_path / "archives"
    ids = history(settings, today=False)
    expected = tmp_path / "archives" / "hitl-archive-000000000001.jsonl"

    async def housekeeping_until_archived() -> None:
        async with open_gate(settings) as gate, anyio.create_task_group() as group:
            group.start_soon(gate.maintain)
            checkpoints = backend(gate.store)
            with anyio.fail_after(60):
                while (await checkpoints.checkpoint()).seq == 0:  # noqa: ASYNC110 - the store's own state
                    await anyio.sleep(0.05)
            group.cancel_scope.cancel()

    anyio.run(housekeeping_until_archived)

    gone = hitl(store_env, "show", ids["old-rejected"])
    assert gone.returncode == 3, (gone.stdout, gone.stderr)
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    assert archived_ids(expected) == {ids["old-rejected"], ids["old-cancelled"]}
    verified = hitl(store_env, "audit", "verify", "--archive", str(expected))
    assert verified.returncode == 0, verified.stdout


def test_archive_after_days_needs_a_folder(config_file: Path, env: dict[str, str]) -> None:
    text = config_file.read_text(encoding="utf-8")
    config_file.write_text(text + "\n[store]\narchive_after_days = 30\n", "utf-8")

    refused = hitl(env, "db", "status")

    assert refused.returncode == 2
    assert "store.archive_dir: needed with store.archive_after_days" in refused.stderr


def test_the_example_shows_every_store_setting() -> None:
    from hitl_mcp.config import StoreSettings
    from tests.test_examples import EXAMPLE, missing, uncommented

    restored = tomllib.loads(uncommented(EXAMPLE.read_text(encoding="utf-8")))

    assert missing(StoreSettings, [restored.get("store", {})], "store") == []


def test_verify_through_a_server_walks_from_the_stores_checkpoint(tmp_path: Path) -> None:
    from tests.inbox import make_site, serve

    site = make_site(tmp_path / "site", tokens=True)
    history(load_settings(site.env), today=False, rejecter="alice")  # a trader, as the site's policy asks
    assert archive(site.env, tmp_path / "archive.jsonl").returncode == 0

    with serve(site) as served:
        token = next(iter(site.tokens.values()))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HITL_SERVER": served.base}
        remote = hitl({**env, "HITL_TOKEN": token}, "audit", "verify")
        local = hitl(site.env, "audit", "verify")

    assert remote.returncode == 0, remote.stdout + remote.stderr
    head = local.stdout.split("head ")[-1]
    assert remote.stdout.strip().endswith(f"head {head.strip()}")
