"""An outcome the server knows is recorded, whatever the store was doing when the action finished: the
server holds it and keeps trying; meanwhile every face says who is recording what, and the store's outage
reaches people as one line (a 503 problem, an exit status) and the server's log as one line each way."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from mcp import Client

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import NotPending
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.models import Request, Status
from hitl_mcp.server import build_server
from tests.cli_in_process import hitl
from tests.environment import process_env
from tests.inbox import make_site, serve, until
from tests.postgres_cluster import Cluster, started_cluster
from tests.smtp_sink import SmtpSink
from tests.test_auth import ACCEPT, INITIALIZE
from tests.test_server import text
from tests.test_store_faults import locked, one_line, with_busy_timeout

EMAIL = {"to": "erin@example.org", "subject": "Quarterly report", "body": "Numbers attached."}


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """A cluster of these tests' own: they stop and start it, which the suite's shared one must not see."""
    cluster = started_cluster()
    try:
        yield cluster
    finally:
        if not (cluster.data / "postmaster.pid").exists():
            cluster.resume()  # a test that failed while it was halted
        cluster.stop()


@pytest.fixture
def own_url(own_cluster: Cluster) -> str:
    return own_cluster.create_database()


def exclusively_locked(db: Path) -> AbstractContextManager[None]:
    """Another process holds an EXCLUSIVE transaction on the store until the block ends."""
    return locked(db, "EXCLUSIVE")


@dataclass
class Answer:
    """What an approver was answered, once it was."""

    given: anyio.Event = field(default_factory=anyio.Event)
    requests: list[Request] = field(default_factory=list)


@asynccontextmanager
async def approving(gate: Gate, request_id: str) -> AsyncIterator[Answer]:
    """Approve (and so run) `request_id` in a task, as an approver would."""
    answer = Answer()

    async def approve() -> None:
        answer.requests.append(await gate.approve(request_id, "alice"))
        answer.given.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(approve)
        yield answer


async def test_an_email_delivered_while_postgresql_stops_is_recorded_executed_once_it_is_back(
    own_cluster: Cluster, own_url: str, tmp_path: Path, config_file: Path, smtp: SmtpSink
) -> None:
    settings = load_settings({**process_env(tmp_path, config_file), "HITL_DB": own_url})
    async with open_gate(settings) as gate:
        request_id = (await gate.file("send_email", EMAIL, "agent")).request_id
        smtp.hold()
        async with approving(gate, request_id) as answered:
            await smtp.wait_holding_async()
            # The message is mid-delivery: the store goes away before the outcome can be written.
            await anyio.to_thread.run_sync(own_cluster.halt)
            smtp.release()
        [answer] = answered.requests
        while_down = await gate.get(request_id)
        await anyio.to_thread.run_sync(own_cluster.resume)
        ended = await gate.wait(request_id, 60)
        trail = [event.event for event in await gate.store.audit_trail(request_id)]

    # The approver heard at once what ran and what is still being done, not an error.
    assert answer.status is Status.EXECUTING and not answer.outcome_unknown
    assert answer.recording is not None
    assert re.match(
        r"executed; recording the outcome: the PostgreSQL server at .* cannot be reached", answer.recording
    )
    assert f"{gate.worker} keeps trying" in answer.recording
    # While the store was down, the server still told its own faces what it holds.
    assert while_down.recording == answer.recording
    assert ended.status is Status.EXECUTED and ended.recording is None
    assert len(smtp.messages) == 1
    assert trail.count("executed") == 1
    async with open_gate(settings, readonly=True) as elsewhere:
        assert (await elsewhere.get(request_id)).status is Status.EXECUTED


async def test_an_outcome_finished_under_a_lock_held_past_the_busy_timeout_is_recorded_after_it(
    env: dict[str, str], smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hitl_mcp")
    settings = load_settings(with_busy_timeout(env, 0.2))
    async with open_gate(settings) as gate:
        request_id = (await gate.file("send_email", EMAIL, "agent")).request_id
        smtp.hold()
        async with approving(gate, request_id) as answered:
            await smtp.wait_holding_async()
            with exclusively_locked(settings.db_path):
                smtp.release()
                # The approver's answer comes while the lock is still held: nothing waits for it.
                with anyio.fail_after(20):
                    await answered.given.wait()
                shown = await gate.get(request_id)
                with pytest.raises(NotPending) as here:
                    await gate.settle(request_id, "bob", "failed", "nothing arrived")
                settle = await anyio.to_thread.run_sync(
                    lambda: hitl(env, "settle", request_id, "--executed", "--note", "saw it", "--as", "bob")
                )
                with closing(sqlite3.connect(settings.db_path)) as conn:
                    stored = conn.execute(
                        "SELECT status FROM requests WHERE id = ?", (request_id,)
                    ).fetchone()
        ended = await gate.wait(request_id, 30)
        trail = [event.event for event in await gate.store.audit_trail(request_id)]

    [answer] = answered.requests
    assert answer.status is Status.EXECUTING
    assert answer.recording is not None
    assert answer.recording.startswith("executed; recording the outcome: ")
    assert "the store is locked by another process" in answer.recording
    assert shown.recording == answer.recording
    assert stored == ("executing",)
    # The server that holds the outcome knows there is nothing for a person to settle.
    assert str(here.value).startswith(f"request {request_id}: executed; recording the outcome: ")
    assert str(here.value).endswith("there is nothing to settle; nothing was changed")
    # Another process cannot see this one's memory, but says who holds the request and when it can act.
    assert settle.returncode == 4
    refusal = one_line(settle.stderr)
    assert f"still being run by {gate.worker}, which records its outcome itself" in refusal
    assert "it can be settled once that process has stopped" in refusal
    assert ended.status is Status.EXECUTED
    assert len(smtp.messages) == 1
    assert trail.count("executed") == 1
    # Tried many times while `hitl settle` started and ran; logged once each way, without a traceback.
    outage = [r for r in caplog.records if r.name == "hitl_mcp.store"]
    assert [r.levelno for r in outage] == [logging.WARNING, logging.INFO], [r.getMessage() for r in outage]
    assert "the store is locked by another process" in outage[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


def test_a_stopped_postgresql_is_a_503_problem_and_one_log_line_each_way(
    own_cluster: Cluster, own_url: str, tmp_path: Path
) -> None:
    site = make_site(tmp_path, tokens=True)
    env = {**site.env, "HITL_DB": own_url}
    settings = load_settings(env)
    request_id = anyio.run(_file, settings)
    with serve(site, env=env) as served, served.api(site.tokens["alice"]) as api:
        assert api.get(f"/api/v1/requests/{request_id}").status_code == 200
        own_cluster.halt()
        try:
            read = api.get(f"/api/v1/requests/{request_id}")
            approve = api.post(f"/api/v1/requests/{request_id}/approve", json={})
            # Housekeeping passes every 0.2 s keep failing meanwhile; the log says so once.
            until(lambda: "the store is unavailable" in served.log.read_text())
            for _ in range(3):
                assert api.get("/api/v1/requests").status_code == 503
            shown = hitl(env, "show", request_id)
        finally:
            own_cluster.resume()
        until(lambda: api.get(f"/api/v1/requests/{request_id}").status_code == 200, timeout=30)
        until(lambda: "the store is available again" in served.log.read_text(), timeout=30)
        log = served.log.read_text()

    for response in (read, approve):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "cannot be reached" in response.json()["detail"]
    assert approve.json()["detail"].endswith("nothing was changed")
    assert shown.returncode == 7
    assert "cannot be reached" in one_line(shown.stderr)
    assert log.count("the store is unavailable") == 1, log
    assert log.count("the store is available again") == 1, log
    assert "Traceback" not in log, log


async def _file(settings: Settings) -> str:
    async with open_gate(settings) as gate:
        return (await gate.file("send_email", EMAIL, "agent")).request_id


async def test_an_mcp_tool_says_the_store_is_unreachable_in_one_line_and_works_again_once_it_is_back(
    own_cluster: Cluster, own_url: str, tmp_path: Path, config_file: Path
) -> None:
    settings = load_settings({**process_env(tmp_path, config_file), "HITL_DB": own_url})
    request_id = await _file(settings)
    async with Client(build_server(settings, principal="alice")) as approver:
        await anyio.to_thread.run_sync(own_cluster.halt)
        try:
            refused = await approver.call_tool("get_request", {"request_id": request_id})
        finally:
            await anyio.to_thread.run_sync(own_cluster.resume)
        # Polled with a deadline: the pool reconnects at its first use after the server is back.
        for _ in range(300):
            again = await approver.call_tool("get_request", {"request_id": request_id})
            if not again.is_error:
                break
            await anyio.sleep(0.1)

    assert refused.is_error
    assert re.search(r": the PostgreSQL server at \S+ cannot be reached \([^\n]*\)$", text(refused))
    assert (again.structured_content or {})["status"] == "pending"


async def test_a_server_stopping_with_an_outcome_the_store_still_refuses_says_so_in_one_line(
    env: dict[str, str], smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(with_busy_timeout(env, 0.2))
    with ExitStack() as lock:
        async with open_gate(settings) as gate:
            request_id = (await gate.file("send_email", EMAIL, "agent")).request_id
            smtp.hold()
            async with approving(gate, request_id):
                await smtp.wait_holding_async()
                lock.enter_context(exclusively_locked(settings.db_path))
                smtp.release()
            # Leaving the gate now, as a stopping server does: one last try, refused too.
        [stopped] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    async with open_gate(settings, readonly=True) as after:
        left = await after.get(request_id)

    assert not [r for r in caplog.records if r.exc_info]
    assert stopped.startswith(f"request {request_id}: executed, but the store would not take its outcome")
    assert "record it with `hitl settle`" in stopped
    assert left.status is Status.EXECUTING and left.claimed_by == gate.worker
    assert len(smtp.messages) == 1


def test_a_stored_token_met_while_postgresql_is_down_is_a_503_not_a_refusal(
    own_cluster: Cluster, own_url: str, tmp_path: Path
) -> None:
    """A token kept in the store cannot be checked while the store is down: the client hears of the outage,
    never that its credential is wrong (401), and the same token works once the store is back."""
    site = make_site(tmp_path, tokens=False)
    env = {**site.env, "HITL_DB": own_url}
    made = hitl(env, "token", "new", "alice", "--name", f"outage-{tmp_path.name}")
    token = re.search(r"^ {4}(\S+)$", made.stdout, re.MULTILINE)
    assert made.returncode == 0 and token is not None, made.stderr
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    with serve(site, env=env) as served, served.api(token.group(1)) as api:
        assert api.get("/api/v1/requests").status_code == 200
        own_cluster.halt()
        try:
            rest = api.get("/api/v1/requests")
            mcp = api.post("/mcp", json=INITIALIZE, headers=ACCEPT | bearer)
        finally:
            own_cluster.resume()
        until(lambda: api.get("/api/v1/requests").status_code == 200, timeout=30)
        log = served.log.read_text()

    for response in (rest, mcp):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "the bearer token cannot be checked now" in response.json()["detail"]
    assert "Traceback" not in log, log
