"""`hitl db backup PATH`: a consistent copy of a live SQLite store, private, never over another file, whose
audit trail verifies to the head the store had at the copy's moment."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from hitl_mcp.store import backup as backups
from tests.cli_in_process import hitl
from tests.test_cli import HITL

ROOT = Path(__file__).resolve().parent.parent


class Filer:
    """tests/filing_driver.py in a process of its own: a server's worth of writers, filing until stopped.
    `filed` counts the filings it has acknowledged (each one durable in the store)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "filing_driver.py"), "4"],
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.filed = 0
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() != "READY":
                with self.changed:
                    self.filed += 1
                    self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.filed >= count, timeout=timeout):
                raise AssertionError(f"the writer filed {self.filed} requests, not {count}, in {timeout}s")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def filer(env: dict[str, str]) -> Iterator[Filer]:
    running = Filer(env)
    try:
        yield running
    finally:
        running.stop()


def hash_at(db: Path, seq: int) -> str:
    with sqlite3.connect(db) as conn:
        found: str = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
    conn.close()
    return found


def test_a_backup_taken_while_a_server_writes_is_consistent_and_never_stops_the_writer(
    env: dict[str, str], filer: Filer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Path(env["HITL_DB"])
    filer.wait_for(1500)
    # Small steps, so the copy takes many of them with the writer committing in between.
    monkeypatch.setattr(backups, "STEP_PAGES", 8)
    steps: list[int] = []

    def progress(done: int, total: int) -> None:
        steps.append(done)
        if len(steps) == 2:
            # Mid-copy, holding its snapshot: the writer must still get its commits through.
            filer.wait_for(filer.filed + 50)

    copy = tmp_path / "copy.db"
    done = anyio.run(lambda: backups.backup(store, copy, progress=progress))
    filer.stop()

    assert len(steps) > 2
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert done.chain.ok and done.chain.records >= 1500
    # The copy is the store as it stood at one moment: its head is the live trail's record at that seq.
    assert done.chain.head == hash_at(store, done.chain.records)
    with sqlite3.connect(copy) as conn:
        copied = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    conn.close()
    with sqlite3.connect(store) as conn:
        live = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    conn.close()
    assert copied == done.chain.records < live

    verified = hitl({**env, "HITL_DB": str(copy)}, "audit", "verify")
    assert verified.returncode == 0
    assert verified.stdout.strip() == f"OK: {done.chain.records} records, head {done.chain.head}"


def test_the_copy_is_private_whatever_the_umask_and_never_overwrites_without_force(
    env: dict[str, str], filer: Filer, tmp_path: Path
) -> None:
    filer.wait_for(20)
    copy = tmp_path / "backups" / "hitl.db"
    copy.parent.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HITL, "db", "backup", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=lambda: os.umask(0),  # the widest umask: the copy must be 0600 all the same
        )

    made = run(str(copy))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert f"copied {env['HITL_DB']} to {copy}" in made.stdout
    first = copy.read_bytes()

    again = run(str(copy))
    assert again.returncode == 2
    assert (
        again.stderr.strip() == f"hitl: PATH: {copy} exists; name a new file, or pass --force to replace it"
    )
    assert copy.read_bytes() == first
    assert [p.name for p in copy.parent.iterdir()] == ["hitl.db"]  # no partial copy left beside it

    forced = run("--force", str(copy))
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert "audit: " in forced.stdout and "records, head" in forced.stdout


def test_on_postgresql_it_says_to_use_pg_dump_and_what_to_keep(
    env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    refused = hitl({**env, "HITL_DB": pg_url}, "db", "backup", str(tmp_path / "copy.db"))

    assert refused.returncode == 2
    assert "pg_dump --format=custom" in refused.stderr
    assert "archive files" in refused.stderr and "audit head" in refused.stderr
    assert not (tmp_path / "copy.db").exists()
