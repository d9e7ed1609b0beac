"""The Slack-message store's contract over SQLite and PostgreSQL: a message posted by one server is found by
another, so that a decision on any server updates every message posted about its request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from hitl_mcp.store import Store
from hitl_mcp.store.slack_messages import SlackMessage, SlackMessageStore
from hitl_mcp.store.sqlite import SQLiteStore
from tests.test_store_contract import open_store, store

__all__ = ["open_store", "store"]  # the contract suite's fixtures: one SQLite file, one PostgreSQL database


def messages(store: Store) -> SlackMessageStore:
    assert isinstance(store, SlackMessageStore)
    return store


async def test_a_posted_message_is_found_by_another_server_once_per_channel_and_ts(
    open_store: Callable[[], Awaitable[Store]],
) -> None:
    poster, decider = messages(await open_store()), messages(await open_store())
    await poster.slack_message_add(SlackMessage("C1", "1700000000.000200", "req_a", 20.0))
    await poster.slack_message_add(SlackMessage("C2", "1700000000.000100", "req_a", 10.0))
    await poster.slack_message_add(SlackMessage("C1", "1700000000.000300", "req_b", 30.0))
    # A delivery retried after Slack took it records the same message again: still one row.
    await poster.slack_message_add(SlackMessage("C1", "1700000000.000200", "req_a", 25.0))

    found = await decider.slack_messages_of("req_a")
    assert [(m.channel, m.ts, m.posted_at) for m in found] == [
        ("C2", "1700000000.000100", 10.0),
        ("C1", "1700000000.000200", 20.0),
    ]
    assert await decider.slack_messages_of("req_c") == []
    for opened in (poster, decider):
        await opened.close()  # type: ignore[attr-defined]


async def test_hitl_db_migrate_carries_the_posted_messages_to_postgresql(
    tmp_path: Path, pg_empty_url: str
) -> None:
    from hitl_mcp.store.postgres import PostgresStore
    from hitl_mcp.store.transfer import copy_to_postgres

    source = SQLiteStore(tmp_path / "store.db")
    await source.open()
    await source.slack_message_add(SlackMessage("C1", "1700000000.000100", "req_a", 10.0))
    await source.close()

    copied = await copy_to_postgres(tmp_path / "store.db", pg_empty_url)
    assert copied.counts["slack_messages"] == 1
    target = PostgresStore(pg_empty_url)
    await target.open()
    try:
        # A decision after the move still updates the message posted before it.
        assert await target.slack_messages_of("req_a") == [
            SlackMessage("C1", "1700000000.000100", "req_a", 10.0)
        ]
    finally:
        await target.close()
