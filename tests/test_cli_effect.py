"""`hitl show` of a failed request says what the failure did to the target, and so what may come next."""

from __future__ import annotations

import os
import socket
import time

import anyio

from hitl_mcp.config import Settings
from hitl_mcp.gate import open_gate
from hitl_mcp.models import Status
from tests.cli_in_process import hitl
from tests.smtp_sink import SmtpSink
from tests.test_cli import BUY, file_request
from tests.test_retry import EMAIL, approve_in_process


def test_show_says_a_failure_without_effect_may_be_retried(
    env: dict[str, str], settings: Settings, smtp: SmtpSink
) -> None:
    request_id = file_request(settings, "send_email", EMAIL)
    smtp.refuse_with = "554 5.7.1 Rejected"
    approve_in_process(settings, request_id)

    shown = hitl(env, "show", request_id[:8])

    assert shown.returncode == 0, shown.stderr
    assert (
        f"Effect     none — it had no effect, and may be retried with `hitl retry {request_id[:10]}` "
        "before it expires"
    ) in shown.stdout.splitlines()


def test_show_says_a_failure_of_unknown_effect_never_runs_again(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)

    async def fail_with_unknown_effect() -> None:
        async with open_gate(settings) as gate:
            await gate.decide(request_id, "alice", "approve")
            worker = f"{socket.gethostname()}:{os.getpid()}"
            await gate.store.claim(request_id, worker, time.time())
            await gate.store.finish(
                request_id,
                Status.FAILED,
                worker,
                None,
                "connection lost mid-call",
                time.time(),
                effect="unknown",
            )

    anyio.run(fail_with_unknown_effect)

    lines = hitl(env, "show", request_id).stdout.splitlines()

    [effect] = [line for line in lines if line.startswith("Effect")]
    assert effect.startswith(
        "Effect     unknown — it may have taken effect, and it is never run again by itself"
    )
    assert "hitl retry" not in effect


def test_approve_that_fails_prints_the_effect_too(
    env: dict[str, str], settings: Settings, smtp: SmtpSink
) -> None:
    request_id = file_request(settings, "send_email", EMAIL)
    smtp.refuse_with = "451 4.3.0 Mailbox busy, try later"

    approved = hitl(env, "approve", request_id, "--yes", "--as", "bob")

    assert approved.returncode == 6
    assert (
        f"effect: none — it had no effect, and may be retried with `hitl retry {request_id[:10]}`"
        in approved.stdout
    )
