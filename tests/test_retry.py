"""A failed execution that certainly had no effect may be run again by an approver; one whose effect is
unknown never is."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import closing

import anyio

from hitl_mcp.config import Settings
from hitl_mcp.gate import open_gate
from hitl_mcp.models import Status
from tests.cli_in_process import hitl
from tests.smtp_sink import SmtpSink
from tests.test_cli import BUY, file_request

EMAIL = {"to": "erin@example.org", "subject": "Hi", "body": "Hello"}


def approve_in_process(settings: Settings, request_id: str) -> None:
    async def run() -> None:
        async with open_gate(settings) as gate:
            await gate.approve(request_id, "alice")

    anyio.run(run)


def events(settings: Settings, request_id: str) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(settings.db_path)) as conn:
        return conn.execute(
            "SELECT event, actor FROM audit WHERE request_id = ? ORDER BY seq", (request_id,)
        ).fetchall()


def test_a_refused_email_can_be_retried_and_is_then_sent_once(
    env: dict[str, str], settings: Settings, smtp: SmtpSink
) -> None:
    request_id = file_request(settings, "send_email", EMAIL)
    smtp.refuse_with = "451 4.3.0 Mailbox busy, try later"
    approve_in_process(settings, request_id)
    failed = json.loads(hitl(env, "show", request_id, "--json").stdout)

    smtp.refuse_with = None
    retried = hitl(env, "retry", request_id[:8], "--as", "bob")

    assert failed["status"] == "failed" and failed["effect"] == "none"
    assert retried.returncode == 0, retried.stderr
    assert f"{request_id} executed" in retried.stdout
    assert len(smtp.wait_for(1)) == 1
    assert [event for event, _ in events(settings, request_id)] == [
        "filed", "approved", "claimed", "failed", "retried", "claimed", "executed"
    ]  # fmt: skip
    assert ("retried", "bob") in events(settings, request_id)


def test_a_retry_is_refused_to_the_requester_and_for_what_did_not_fail_cleanly(
    env: dict[str, str], settings: Settings, smtp: SmtpSink
) -> None:
    clean = file_request(settings, "send_email", EMAIL)
    smtp.refuse_with = "554 5.7.1 Rejected"
    approve_in_process(settings, clean)
    executed = file_request(settings, "buy_stock", BUY)
    approve_in_process(settings, executed)
    unknown = file_request(settings, "buy_stock", {**BUY, "quantity": 3})

    async def fail_with_unknown_effect() -> None:
        async with open_gate(settings) as gate:
            await gate.decide(unknown, "alice", "approve")
            worker = f"{socket.gethostname()}:{os.getpid()}"
            await gate.store.claim(unknown, worker, time.time())
            await gate.store.finish(
                unknown,
                Status.FAILED,
                worker,
                None,
                "connection lost mid-call",
                time.time(),
                effect="unknown",
            )

    anyio.run(fail_with_unknown_effect)

    by_requester = hitl(env, "retry", clean, "--as", "AGENT")
    not_failed = hitl(env, "retry", executed, "--as", "bob")
    of_unknown_effect = hitl(env, "retry", unknown, "--as", "bob")

    assert by_requester.returncode == 5 and "not its requester" in by_requester.stderr
    assert not_failed.returncode == 4 and "executed, not failed" in not_failed.stderr
    assert of_unknown_effect.returncode == 4 and "effect that is unknown" in of_unknown_effect.stderr
    assert smtp.messages == []


def test_a_delete_refused_at_execution_has_no_effect_and_runs_once_retried(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(
        settings, "delete_database_records", {"table": "users", "condition": "age < 30"}
    )
    database = settings.actions["delete_database_records"].database  # type: ignore[attr-defined]
    with closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("INSERT INTO users (id, email, age) VALUES (9, 'new@test.com', 19)")
    approve_in_process(settings, request_id)
    failed = json.loads(hitl(env, "show", request_id, "--json").stdout)
    with closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("DELETE FROM users WHERE id = 9")

    retried = hitl(env, "retry", request_id, "--as", "bob", "--json")

    assert failed["effect"] == "none" and "rows match now but the approver was shown 2" in failed["error"]
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["result"]["deleted"] == 2
