"""`hitl db migrate` and a store still in use: while another process has the SQLite store open — a server
idle or writing — the copy is refused in one line saying why, and the target is left empty; once that
process is gone, the same command copies everything it wrote."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import asyncpg

from hitl_mcp.config import Settings
from tests.cli_in_process import hitl
from tests.test_auth import serving
from tests.test_cli import BUY, file_request
from tests.test_store_faults import one_line

# A second process on the store, filing requests one after another until its stdin closes: a live server's
# writes, without a server's start-up time. It says "filing" once its first request is in.
WRITER = """
import os, sys, threading, anyio
from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

async def main() -> None:
    async with open_gate(load_settings(os.environ)) as gate:
        args = {"symbol": "GOOGL", "quantity": 1, "price": 1.0}
        filed = 0
        while not stop.is_set():
            await gate.file("buy_stock", args, "agent")
            filed += 1
            if filed == 1:
                print("filing", flush=True)
    print(filed, flush=True)

anyio.run(main)
"""


@contextmanager
def writing(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "filing", writer.stderr.read() if writer.stderr else ""
        yield writer
    finally:
        if writer.poll() is None:
            assert writer.stdin is not None
            writer.stdin.close()
            writer.wait(timeout=30)


def requests_in(url: str) -> int | None:
    """How many requests the PostgreSQL database holds; None when it has no requests table."""

    async def count() -> int | None:
        conn = await asyncpg.connect(url)
        try:
            if await conn.fetchval("SELECT to_regclass('requests')") is None:
                return None
            return int(await conn.fetchval("SELECT count(*) FROM requests"))
        finally:
            await conn.close()

    return anyio.run(count)


def test_migrate_refuses_a_store_another_process_is_writing_and_copies_it_once_that_stops(
    env: dict[str, str], settings: Settings, pg_empty_url: str
) -> None:
    file_request(settings, "buy_stock", BUY)

    with writing(env) as writer:
        refused = hitl(env, "db", "migrate", "--to", pg_empty_url)
        still_writing = writer.poll() is None
    assert writer.stdout is not None
    filed_meanwhile = int(writer.stdout.read().strip())
    moved = hitl(env, "db", "migrate", "--to", pg_empty_url)

    assert refused.returncode == 7, refused.stderr
    assert one_line(refused.stderr) == (
        f"hitl: {settings.db_path} is open in another process (a `hitl serve` still running on it, or a "
        "command not yet done): what it writes after the copy would be lost, so stop it first; nothing "
        "was copied"
    )
    assert still_writing and filed_meanwhile >= 1
    assert moved.returncode == 0, moved.stderr
    # Everything: the request filed before, and every one the writer filed, the last ones included.
    assert f"copied {1 + filed_meanwhile:,} requests" in moved.stdout
    assert requests_in(pg_empty_url) == 1 + filed_meanwhile


def test_migrate_refuses_a_store_an_idle_server_holds_open(
    env: dict[str, str], settings: Settings, pg_empty_url: str
) -> None:
    file_request(settings, "buy_stock", BUY)
    with serving(env, settings.db_path.parent / "server.log"):
        refused = hitl(env, "db", "migrate", "--to", pg_empty_url)

    assert refused.returncode == 7 and "is open in another process" in one_line(refused.stderr)
    assert requests_in(pg_empty_url) is None
