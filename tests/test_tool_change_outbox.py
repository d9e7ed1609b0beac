"""A `tool-changed` record, which belongs to no request, queues its notifications in its own transaction
on both stores, as a request's records do; a record of no request that no notifier wants (`passed`)
queues nothing."""

from __future__ import annotations

import time
from pathlib import Path

from hitl_mcp.notify.settings import Notifier
from hitl_mcp.store import Store
from hitl_mcp.store.postgres import PostgresStore
from hitl_mcp.store.sqlite import SQLiteStore

NOTIFIERS = (
    Notifier.model_validate({"on": ["tool-changed", "filed"], "webhook": "http://127.0.0.1:9/hook"}),
    Notifier.model_validate({"on": ["tool-changed"], "webhook": "http://127.0.0.1:9/l", "levels": [1]}),
)
CHANGE = {"upstream": "notes", "tool": "fail", "exposed_as": "notes__fail", "changed": ["annotations"]}


async def queued_by_a_tool_change(store: Store) -> list[tuple[str, str, dict[str, object]]]:
    await store.open()
    try:
        now = time.time()
        await store.record_event("upstream.notes", "tool-changed", "upstream.notes", CHANGE, now)
        await store.record_event("p1", "passed", "agent", {"tool": "notes__read_note"}, now)
        claimed = await store.outbox_claim("test", now + 1, 10, 30)
    finally:
        await store.close()
    return [(row.request_id, row.event, row.payload["notice"]) for row in claimed]


def expected() -> list[tuple[str, str, dict[str, object]]]:
    notice: dict[str, object] = {
        "upstream": "notes",
        "tool": "notes__fail",
        "changed": ["annotations"],
        "decision": "",
        "why": "",
        "held": False,
    }
    # The notifier limited to a level never hears of it: a change has no levels.
    return [("upstream.notes", "tool-changed", notice)]


async def test_sqlite_queues_a_tool_change_for_its_notifiers(tmp_path: Path) -> None:
    assert await queued_by_a_tool_change(SQLiteStore(tmp_path / "hitl.db", notify=NOTIFIERS)) == expected()


async def test_postgres_queues_a_tool_change_for_its_notifiers(pg_url: str) -> None:
    assert await queued_by_a_tool_change(PostgresStore(pg_url, notify=NOTIFIERS)) == expected()
