"""The credential store's contract (tokens and inbox sessions), over SQLite and PostgreSQL alike: what
every server on a store relies on to honour a token or a sign-in the moment it is made, and never after
it is revoked, expired or signed out."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hitl_mcp import report
from hitl_mcp.errors import InvalidArguments
from hitl_mcp.store import Store
from hitl_mcp.store.credentials import CredentialStore, NewToken, StoredSession
from hitl_mcp.store.sqlite import SQLiteStore
from hitl_mcp.store.sqlite_schema import SCHEMA_VERSION
from tests.test_store_contract import open_store, store

__all__ = ["open_store", "store"]  # the contract suite's fixtures: one SQLite file, one PostgreSQL database

NOW = 1_000_000.0


def token(name: str, sha256: str, *, principal: str = "alice", expires_at: float | None = None) -> NewToken:
    return NewToken(
        id=f"tok_{name}",
        name=name,
        principal=principal,
        roles=("finance",),
        sha256=sha256,
        created_at=NOW,
        created_by="admin",
        expires_at=expires_at,
    )


def credentials(store: Store) -> CredentialStore:
    assert isinstance(store, CredentialStore)
    return store


async def test_a_made_token_is_found_by_its_digest_in_another_process_until_revoked(
    open_store: Callable[[], Awaitable[Store]],
) -> None:
    maker, server = credentials(await open_store()), credentials(await open_store())
    made = await maker.token_insert(token("bot", "a" * 64))
    assert (made.principal, made.roles, made.created_by) == ("alice", ("finance",), "admin")
    found = await server.token_find("a" * 64, NOW + 1)
    assert found is not None and found.id == "tok_bot"
    assert await server.token_find("b" * 64, NOW + 1) is None
    assert await server.token_count(NOW + 1) == 1

    revoked = await maker.token_revoke("bot", "admin", NOW + 2)
    assert revoked is not None and revoked.revoked_at == NOW + 2
    assert await server.token_find("a" * 64, NOW + 3) is None
    assert await server.token_count(NOW + 3) == 0
    assert await maker.token_revoke("bot", "admin", NOW + 4) is None  # nothing left to revoke
    await maker.close()  # type: ignore[attr-defined]
    await server.close()  # type: ignore[attr-defined]


async def test_an_expired_token_is_not_found_and_last_use_is_recorded(store: Store) -> None:
    tokens = credentials(store)
    await tokens.token_insert(token("short", "c" * 64, expires_at=NOW + 10))
    assert await tokens.token_find("c" * 64, NOW + 9) is not None
    assert await tokens.token_find("c" * 64, NOW + 10) is None
    await tokens.token_used("tok_short", NOW + 5)
    [listed] = await tokens.token_list()
    assert listed.last_used_at == NOW + 5 and not listed.live(NOW + 10)


async def test_a_live_name_is_unique_and_free_again_once_revoked(store: Store) -> None:
    tokens = credentials(store)
    await tokens.token_insert(token("ci", "d" * 64))
    with pytest.raises(InvalidArguments, match="name: a token named 'ci' exists"):
        await tokens.token_insert(NewToken("tok_other", "ci", "bob", (), "e" * 64, NOW, "bob", None))
    assert [t.id for t in await tokens.token_list()] == ["tok_ci"]
    assert await tokens.token_revoke("tok_ci", "admin", NOW + 1) is not None  # by id
    await tokens.token_insert(NewToken("tok_other", "ci", "bob", (), "e" * 64, NOW + 2, "bob", None))
    assert [t.id for t in await tokens.token_list("bob")] == ["tok_other"]


async def test_a_principal_revokes_only_its_own_tokens(store: Store) -> None:
    tokens = credentials(store)
    await tokens.token_insert(token("alices", "f" * 64))
    assert await tokens.token_revoke("alices", "bob", NOW + 1, principal="bob") is None
    assert await tokens.token_find("f" * 64, NOW + 1) is not None
    assert await tokens.token_revoke("alices", "alice", NOW + 1, principal="alice") is not None


async def test_making_and_revoking_a_token_is_audited_on_its_own_trail(store: Store) -> None:
    tokens = credentials(store)
    await tokens.token_insert(token("audited", "1" * 64))
    await tokens.token_revoke("audited", "bob", NOW + 1)
    trail = await store.audit_trail("tok_audited")
    assert [(e.event, e.actor) for e in trail] == [("token-made", "admin"), ("token-revoked", "bob")]
    assert trail[0].details["principal"] == "alice" and "1" * 64 not in str(trail[0].details)
    # Counted among events in the report, never as a request of an unknown tool.
    made = await report.from_store(store)
    assert made.tools == {} and made.events == {"token-made": 1, "token-revoked": 1}


def session(*, last_seen_at: float = NOW, expires_at: float = NOW + 3600) -> StoredSession:
    return StoredSession("alice", ("finance",), "csrf", "id.token", NOW, last_seen_at, expires_at)


async def test_a_session_is_honoured_by_another_process_until_idle_expired_or_deleted(
    open_store: Callable[[], Awaitable[Store]],
) -> None:
    first, second = credentials(await open_store()), credentials(await open_store())
    await first.session_insert("s" * 64, session())
    found = await second.session_find("s" * 64, NOW + 100, idle_seconds=600)
    assert found == session()
    assert await second.session_find("s" * 64, NOW + 600, idle_seconds=600) is None  # idle too long
    await second.session_touch("s" * 64, NOW + 500)
    assert await first.session_find("s" * 64, NOW + 1000, idle_seconds=600) is not None
    assert await first.session_find("s" * 64, NOW + 3600, idle_seconds=10_000) is None  # absolute expiry
    assert await first.session_delete("s" * 64)
    assert await second.session_find("s" * 64, NOW + 1000, idle_seconds=600) is None
    await first.close()  # type: ignore[attr-defined]
    await second.close()  # type: ignore[attr-defined]


async def test_pruning_forgets_expired_and_idle_sessions_only(store: Store) -> None:
    sessions = credentials(store)
    await sessions.session_insert("1" * 64, session(expires_at=NOW + 10))
    await sessions.session_insert("2" * 64, session(last_seen_at=NOW - 700))
    await sessions.session_insert("3" * 64, session())
    assert await sessions.session_prune(NOW + 20, idle_seconds=600) == 2
    assert await sessions.session_find("3" * 64, NOW + 20, idle_seconds=600) is not None


async def test_an_sqlite_store_of_the_previous_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = SQLiteStore(path)
    await old.open()
    await old.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE tokens")
        conn.execute("DROP TABLE sessions")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    upgraded = SQLiteStore(path)
    await upgraded.open()
    try:
        await upgraded.token_insert(token("after", "9" * 64))
        assert await upgraded.token_count(NOW) == 1
    finally:
        await upgraded.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_hitl_db_migrate_carries_tokens_and_sessions_to_postgresql(
    tmp_path: Path, pg_empty_url: str
) -> None:
    from hitl_mcp.store.postgres import PostgresStore
    from hitl_mcp.store.transfer import copy_to_postgres

    source = SQLiteStore(tmp_path / "store.db")
    await source.open()
    await source.token_insert(token("moved", "7" * 64))
    await source.session_insert("8" * 64, session())
    await source.close()

    copied = await copy_to_postgres(tmp_path / "store.db", pg_empty_url)
    assert copied.counts["tokens"] == 1 and copied.counts["sessions"] == 1
    target = PostgresStore(pg_empty_url)
    await target.open()
    try:
        found = await target.token_find("7" * 64, NOW)
        assert found is not None and found.roles == ("finance",)
        assert await target.session_find("8" * 64, NOW, idle_seconds=600) == session()
    finally:
        await target.close()
