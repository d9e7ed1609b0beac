"""The human face and real processes: `hitl` subprocesses, a stdio server, an HTTP server killed mid-way."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from hitl_mcp.config import Settings
from hitl_mcp.gate import open_gate
from tests.smtp_sink import SmtpSink

HITL = str(Path(sys.executable).parent / "hitl")
BUY = {"symbol": "GOOGL", "quantity": 100, "price": 150.0}


def hitl(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HITL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def statuses(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, status FROM requests").fetchall())


def test_list_shows_pending_requests_as_a_table_and_as_json(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(settings, "buy_stock", BUY)

    table = hitl(env, "list")
    as_json = hitl(env, "list", "--json")

    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:4] == ["ID", "AGE", "TOOL", "STATUS"]
    assert row.startswith(request_id[:10]) and "Buy 100 GOOGL" in row and "agent" in row
    [record] = json.loads(as_json.stdout)
    assert record["request_id"] == request_id
    assert record["preview"]["total"] == 15000.0
    assert record["decisions"] == []


def test_show_accepts_a_prefix_and_prints_the_preview(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(
        settings, "delete_database_records", {"table": "users", "condition": "age < 30"}
    )

    shown = hitl(env, "show", request_id[:8])

    assert shown.returncode == 0, shown.stderr
    assert request_id in shown.stdout
    assert '"matching_rows": 2' in shown.stdout


def test_approve_runs_the_action_and_prints_its_outcome(
    env: dict[str, str], settings: Settings, smtp: SmtpSink
) -> None:
    request_id = file_request(
        settings, "send_email", {"to": "erin@example.org", "subject": "Hi", "body": "Hello"}
    )

    approved = hitl(env, "approve", request_id, "--as", "alice", "--reason", "ok", "--yes")

    assert approved.returncode == 0, approved.stderr
    assert "executed" in approved.stdout
    assert len(smtp.wait_for(1)) == 1
    assert statuses(settings.db_path)[request_id] == "executed"


@pytest.mark.parametrize("stdin", ["", "n\n", "y\n"])
def test_approve_without_a_terminal_needs_yes_and_changes_nothing(
    env: dict[str, str], settings: Settings, stdin: str
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)

    # `echo n | hitl approve ID` and `hitl approve ID </dev/null`: nobody could answer the question.
    refused = hitl(env, "approve", request_id, "--as", "alice", stdin=stdin)

    assert refused.returncode == 2
    assert "pass --yes" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert statuses(settings.db_path)[request_id] == "pending"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["approve", "{id}", "--as", "agent", "--yes"], "may not decide its own request"),
        (["reject", "{id}", "--as", "agent", "--reason", "no"], "may not decide its own request"),
        (["approve", "ffffffffffffffffffff", "--as", "alice", "--yes"], "no request has id"),
        (["approve", "not-an-id", "--as", "alice", "--yes"], "is not a request id"),
    ],
)
def test_refusals_exit_non_zero_with_one_line(
    env: dict[str, str], settings: Settings, args: list[str], message: str
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)

    refused = hitl(env, *[arg.format(id=request_id) for arg in args])

    assert refused.returncode != 0
    assert message in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert statuses(settings.db_path)[request_id] == "pending"


def test_deciding_a_finished_request_is_refused(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(settings, "buy_stock", BUY)
    assert hitl(env, "reject", request_id, "--as", "alice", "--reason", "too big").returncode == 0

    again = hitl(env, "approve", request_id, "--as", "bob", "--yes")

    assert again.returncode != 0
    assert "rejected, not pending" in again.stderr


def test_reject_requires_a_reason(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(settings, "buy_stock", BUY)

    refused = hitl(env, "reject", request_id, "--as", "alice")

    assert refused.returncode == 2
    assert "--reason" in refused.stderr


def test_a_bad_config_file_is_refused_naming_the_key(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[actions.buy_stock]\nstarting_cash = 'lots'\n")

    refused = hitl({**env, "HITL_CONFIG": str(bad)}, "list")

    assert refused.returncode == 2
    assert "actions.buy_stock.starting_cash" in refused.stderr


def test_eight_racing_approvers_deliver_exactly_one_email(
    env: dict[str, str], settings: Settings, smtp: SmtpSink
) -> None:
    request_id = file_request(
        settings, "send_email", {"to": "finn@example.org", "subject": "Once", "body": "!"}
    )

    racers = [
        subprocess.Popen(
            [HITL, "approve", request_id, "--as", f"approver{i}", "--yes"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    exits = [racer.wait(timeout=60) for racer in racers]
    for racer in racers:
        racer.communicate()

    assert sorted(exits).count(0) == 1
    assert len(smtp.wait_for(1)) == 1
    with sqlite3.connect(settings.db_path) as conn:
        events = [
            row[0] for row in conn.execute("SELECT event FROM audit WHERE request_id = ?", (request_id,))
        ]
    assert events.count("executed") == 1 and events.count("approved") == 1
    assert statuses(settings.db_path)[request_id] == "executed"
    # Nothing more arrives once everyone has finished.
    assert len(smtp.messages) == 1


async def test_stdio_server_files_requests_for_a_human_to_approve(
    env: dict[str, str], settings: Settings
) -> None:
    params = StdioServerParameters(command=HITL, args=["serve"], env=env)
    async with Client(params) as client:
        result = await client.call_tool("buy_stock", BUY)
        assert not result.is_error
        assert result.structured_content is not None
        request_id = result.structured_content["request_id"]

        approved = await anyio.to_thread.run_sync(
            lambda: hitl(env, "approve", request_id[:6], "--as", "alice", "--yes")
        )
        waited = await client.call_tool(
            "wait_for_decision", {"request_id": request_id, "timeout_seconds": 20}
        )

    assert approved.returncode == 0, approved.stderr
    assert waited.structured_content is not None
    assert waited.structured_content["status"] == "executed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def http_server(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    server = subprocess.Popen(
        [HITL, "serve", "--http", "--port", str(port)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("hitl serve --http did not start")
            time.sleep(0.05)
        yield server
    finally:
        server.kill()
        server.wait(timeout=10)


async def test_a_request_filed_before_the_server_is_killed_is_approved_after_restart(
    env: dict[str, str], settings: Settings
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with http_server(env, port):
        async with Client(url) as client:
            filed = await client.call_tool("buy_stock", BUY)
            assert filed.structured_content is not None
            request_id = filed.structured_content["request_id"]
    # The first server died with SIGKILL; a new one starts on the same store.
    with http_server(env, port):
        approved = await anyio.to_thread.run_sync(
            lambda: hitl(env, "approve", request_id, "--as", "alice", "-y")
        )
        async with Client(url) as client:
            record = await client.call_tool("get_request", {"request_id": request_id})

    assert approved.returncode == 0, approved.stderr
    assert record.structured_content is not None
    assert record.structured_content["status"] == "executed"


def file_request(settings: Settings, tool: str, arguments: dict[str, Any]) -> str:
    """File as the agent through the gate's API, as the server would."""

    async def run() -> str:
        async with open_gate(settings) as gate:
            return (await gate.file(tool, arguments, "agent")).request_id

    return anyio.run(run)


def on_terminal(env: dict[str, str], *args: str, answer: str) -> tuple[int, str]:
    """Run `hitl` on a pseudo-terminal, answer its first question, and return its exit status and screen."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([HITL, *args], env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    screen = b""
    answered = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process has finished writing
                break
            if not chunk:
                break
            screen += chunk
            if not answered and b"[y/N]" in screen:
                os.write(controller, answer.encode() + b"\n")
                answered = True
        return process.wait(timeout=30), screen.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()


def test_approve_on_a_terminal_shows_the_preview_and_asks_first(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)

    declined, screen = on_terminal(env, "approve", request_id, "--as", "alice", answer="n")
    assert declined != 0
    assert "Buy 100 GOOGL at $150.00" in screen and '"cash_after"' in screen
    assert statuses(settings.db_path)[request_id] == "pending"

    accepted, screen = on_terminal(env, "approve", request_id, "--as", "alice", answer="y")
    assert accepted == 0, screen
    assert statuses(settings.db_path)[request_id] == "executed"


def test_settle_records_what_a_person_found_for_a_request_of_unknown_outcome(
    env: dict[str, str], settings: Settings
) -> None:
    running = file_request(settings, "buy_stock", BUY)
    orphan = file_request(settings, "buy_stock", BUY)

    async def claim_both() -> None:
        async with open_gate(settings) as gate:
            for request_id in (running, orphan):
                await gate.decide(request_id, "alice", "approve")
            # One claimed by a live process (this one), one by a process that no longer exists.
            host = socket.gethostname()
            await gate.store.claim(running, f"{host}:{os.getpid()}", time.time())
            await gate.store.claim(orphan, f"{host}:{dead_pid()}", time.time())

    anyio.run(claim_both)
    listed = hitl(env, "list")
    refused = hitl(env, "settle", running, "--failed", "--note", "checked", "--as", "bob")
    settled = hitl(env, "settle", orphan, "--failed", "--note", "no order at the broker", "--as", "bob")

    # Without options, `hitl list` shows what needs a person: the orphan, not the one still running.
    assert "executing (outcome unknown)" in listed.stdout
    assert running[:10] not in listed.stdout
    assert refused.returncode == 4
    assert "still being run by" in refused.stderr
    assert settled.returncode == 0, settled.stderr
    assert statuses(settings.db_path) == {running: "executing", orphan: "failed"}
    with sqlite3.connect(settings.db_path) as conn:
        actor, details = conn.execute(
            "SELECT actor, details FROM audit WHERE request_id = ? ORDER BY seq DESC LIMIT 1", (orphan,)
        ).fetchone()
    assert actor == "bob"
    assert json.loads(details)["note"] == "no order at the broker"


def dead_pid() -> int:
    """The pid of a process that has finished."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(finished.stdout)
