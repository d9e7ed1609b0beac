"""The decision-link store's contract, over SQLite and PostgreSQL alike: a link is found by its digest in
any process, spent once however many try at once, and never after it expired."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from hitl_mcp.store import Store
from hitl_mcp.store.links import LinkStore, LinkToken
from hitl_mcp.store.sqlite import SQLiteStore
from tests.test_store_contract import open_store, store

__all__ = ["open_store", "store"]

NOW = 1_000_000.0


def link(sha256: str, *, expires_at: float = NOW + 3600) -> LinkToken:
    return LinkToken(sha256, "req_1", "alice", "d" * 64, NOW, expires_at)


def links(store: Store) -> LinkStore:
    assert isinstance(store, LinkStore)
    return store


async def test_a_link_is_spent_once_even_by_two_processes_at_once(
    open_store: Callable[[], Awaitable[Store]],
) -> None:
    mailer, server_a, server_b = [links(await open_store()) for _ in range(3)]
    await mailer.link_insert(link("a" * 64))
    assert await server_a.link_find("a" * 64) == link("a" * 64)
    assert await server_a.link_find("b" * 64) is None

    spent: list[bool] = []

    async def spend(store: LinkStore) -> None:
        spent.append(await store.link_spend("a" * 64, NOW + 1))

    async with anyio.create_task_group() as tasks:
        for store in (server_a, server_b, server_a, server_b):
            tasks.start_soon(spend, store)
    assert sorted(spent) == [False, False, False, True]
    found = await server_b.link_find("a" * 64)
    assert found is not None and found.used_at == NOW + 1  # the page can still say when it was used


async def test_an_expired_link_is_not_spent_and_is_pruned(store: Store) -> None:
    stored = links(store)
    await stored.link_insert(link("c" * 64, expires_at=NOW + 10))
    await stored.link_insert(link("e" * 64, expires_at=NOW + 100))
    assert not await stored.link_spend("c" * 64, NOW + 10)
    assert not await stored.link_spend("f" * 64, NOW)  # unknown
    assert await stored.link_prune(NOW + 50) == 1
    assert await stored.link_find("c" * 64) is None
    assert await stored.link_find("e" * 64) is not None


async def test_hitl_db_migrate_carries_unused_links_to_postgresql(tmp_path: Path, pg_empty_url: str) -> None:
    from hitl_mcp.store.postgres import PostgresStore
    from hitl_mcp.store.transfer import copy_to_postgres

    source = SQLiteStore(tmp_path / "store.db")
    await source.open()
    await source.link_insert(link("7" * 64))
    await source.close()

    copied = await copy_to_postgres(tmp_path / "store.db", pg_empty_url)
    assert copied.counts["link_tokens"] == 1
    target = PostgresStore(pg_empty_url)
    await target.open()
    try:
        assert await target.link_spend("7" * 64, NOW + 1)
    finally:
        await target.close()
