"""A passed call is recorded (`passed`, outcome "forwarded") while it is on its way to the upstream; an
error answer, or none, adds a `pass-outcome` record on the same id before the agent hears it. The report
still counts one passed call, on SQLite and PostgreSQL alike, and nobody is told of a request that does
not exist."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.report import from_connection, from_store
from hitl_mcp.store import Store
from hitl_mcp.store.postgres import PostgresStore
from hitl_mcp.store.sqlite import SQLiteStore
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_gateway import session, upstream_table
from tests.test_server import text
from tests.test_store_faults import locked

# Long enough for the test to see the `passed` record while the call waits, short enough to wait for.
CALL_TIMEOUT = 2.0


def timing_out(tmp_path: Path, smtp: SmtpSink, counter: Path) -> Settings:
    """The test upstream, each call given CALL_TIMEOUT seconds: a long `sleep` is never answered."""
    extra = upstream_table(counter, settings=f"call_timeout_seconds = {CALL_TIMEOUT}")
    config = write_config(tmp_path / "timing-out.toml", smtp_port=smtp.port, extra=extra)
    return load_settings(process_env(tmp_path, config))


def trail(db: Path) -> list[tuple[str, str, dict[str, Any]]]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT request_id, event, details FROM audit ORDER BY seq").fetchall()
    return [(request_id, event, json.loads(details)) for request_id, event, details in rows]


async def until_recorded(db: Path, event: str) -> None:
    with anyio.fail_after(10):
        while event not in {row[1] for row in trail(db)}:  # noqa: ASYNC110 -- written by the store's thread
            await anyio.sleep(0.02)


async def test_a_call_the_upstream_never_answers_is_recorded_before_and_after(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    settings = timing_out(tmp_path, smtp, counter)
    answers: list[Any] = []
    async with session(settings, "agent") as agent:

        async def call() -> None:
            answers.append(await agent.call_tool("notes__sleep", {"seconds": 60}))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call)
            # The record is durable while the upstream still works on the call: the two overlap.
            await until_recorded(settings.db_path, "passed")
            assert answers == []

    (lost,) = answers
    why = f"notes: no answer within {CALL_TIMEOUT:g} s, after sleep was sent; whether it ran is unknown"
    assert lost.is_error and text(lost) == f"notes did not answer: {why}"
    (passed_id, _, passed), (outcome_id, event, outcome) = trail(settings.db_path)
    assert passed["outcome"] == "forwarded" and event == "pass-outcome" and outcome_id == passed_id
    assert outcome == {"tool": "notes__sleep", "outcome": f"failed: LostAfterSend: {why}"}
    # One passed call in the report, folded in Python and counted by the store's triggers alike.
    with closing(sqlite3.connect(settings.db_path)) as conn:
        folded = from_connection(conn)
    store = SQLiteStore(settings.db_path, readonly=True)
    await store.open()
    try:
        counted = await from_store(store)
    finally:
        await store.close()
    for report in (folded, counted):
        assert report.requests == 1 and report.tools == {"notes__sleep": {"passed": 1}}
        assert report.events == {"pass-outcome": 1, "passed": 1}


async def test_an_error_answer_is_withheld_when_its_outcome_cannot_be_recorded(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    settings = timing_out(tmp_path, smtp, counter)
    quick = settings.gate.model_copy(update={"busy_timeout_seconds": 0.2})
    settings = dataclasses.replace(settings, gate=quick)
    answers: list[Any] = []
    answered = anyio.Event()
    async with session(settings, "agent") as agent:

        async def call() -> None:
            answers.append(await agent.call_tool("notes__sleep", {"seconds": 60}))
            answered.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call)
            await until_recorded(settings.db_path, "passed")
            with locked(settings.db_path), anyio.fail_after(30):
                # The call times out while the store is locked: its outcome record cannot be written.
                await answered.wait()

    (withheld,) = answers
    assert withheld.is_error and text(withheld) == (
        "Error executing tool notes__sleep: notes__sleep was answered but its audit record could not be "
        "written (the store is locked by another process); the answer is withheld. Call it again once the "
        "store takes writes."
    )
    assert [event for _, event, _ in trail(settings.db_path)] == ["passed"]


async def a_pass_with_its_outcome(store: Store) -> tuple[list[str], dict[str, Any]]:
    """What a subscriber is told, and what the report says, after one pass answered with an error."""
    await store.open()
    try:
        _, seen = await store.changed_since(None)
        await store.record_event("p1", "passed", "agent", {"tool": "notes__read_note"}, 1000.0)
        await store.record_event(
            "p1", "pass-outcome", "agent", {"tool": "notes__read_note", "outcome": "failed: x"}, 1001.0
        )
        changed, _ = await store.changed_since(seen)
        report = await from_store(store)
    finally:
        await store.close()
    return changed, report.to_json()


EXPECTED = {"notes__read_note": {"requests": 1, "outcomes": {"passed": 1}}}


async def test_a_pass_outcome_is_no_request_of_its_own_on_sqlite(tmp_path: Path) -> None:
    changed, report = await a_pass_with_its_outcome(SQLiteStore(tmp_path / "hitl.db"))
    assert changed == []
    assert report["tools"] == EXPECTED and report["events"] == {"pass-outcome": 1, "passed": 1}


async def test_a_pass_outcome_is_no_request_of_its_own_on_postgres(pg_url: str) -> None:
    changed, report = await a_pass_with_its_outcome(PostgresStore(pg_url))
    assert changed == []
    assert report["tools"] == EXPECTED and report["events"] == {"pass-outcome": 1, "passed": 1}


async def a_lone_pass_outcome(store: Store) -> dict[str, Any]:
    """The report after an archive cut fell between a pass and its outcome: the outcome stayed alone."""
    await store.open()
    try:
        await store.record_event(
            "p2", "pass-outcome", "agent", {"tool": "notes__read_note", "outcome": "failed: x"}, 1001.0
        )
        report = await from_store(store)
    finally:
        await store.close()
    return report.to_json()


async def test_a_pass_outcome_left_alone_by_an_archive_is_no_request_on_sqlite(tmp_path: Path) -> None:
    report = await a_lone_pass_outcome(SQLiteStore(tmp_path / "hitl.db"))
    assert report["tools"] == {} and report["events"] == {"pass-outcome": 1}


async def test_a_pass_outcome_left_alone_by_an_archive_is_no_request_on_postgres(pg_url: str) -> None:
    report = await a_lone_pass_outcome(PostgresStore(pg_url))
    assert report["tools"] == {} and report["events"] == {"pass-outcome": 1}
