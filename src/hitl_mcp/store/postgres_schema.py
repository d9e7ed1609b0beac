"""The PostgreSQL store's schema: one SQL file per step under migrations/postgres/, applied in order and
recorded in `hitl_migrations`, and how a database is recognised as a hitl store.

A server never changes the schema of a database it shares with other servers: it refuses one that is
older or newer than it knows, and `hitl db upgrade` applies what is new, in one transaction under an
advisory lock (two upgrades at once apply each step once), so an upgrade is reviewable and reversible up
to its commit. The SQLite store, which one file's owner alone uses, upgrades itself at open instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from hitl_mcp.errors import ConfigError
from hitl_mcp.store.postgres_rows import Conn

MIGRATIONS_TABLE = "hitl_migrations"
OUR_TABLES = frozenset({"requests", "decisions", "audit", "audit_head", "outbox", MIGRATIONS_TABLE})
# The first key of every advisory lock the store takes (pg_advisory_xact_lock(key, key2)): "hitl" in ASCII.
LOCK_SPACE = 0x6869746C
UPGRADE_LOCK = 0
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every step this version knows, in order: `NNNN_name.sql` brings the schema to version NNNN."""
    folder = resources.files("hitl_mcp.store") / "migrations" / "postgres"
    found = []
    for entry in folder.iterdir():
        matched = _FILE.match(entry.name)
        if matched:
            found.append(Migration(int(matched[1]), matched[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the PostgreSQL migrations are not numbered 1..n: {[m.version for m in found]}")
    return found


SCHEMA_VERSION = len(migrations())


@dataclass(frozen=True)
class Found:
    """What a database holds in its current schema (search_path), read without taking a lock."""

    version: int
    tables: frozenset[str]

    @property
    def empty(self) -> bool:
        return not self.tables

    @property
    def ours(self) -> bool:
        return MIGRATIONS_TABLE in self.tables


async def inspect(conn: Conn) -> Found:
    tables = frozenset(
        str(row[0])
        for row in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    )
    version = 0
    if MIGRATIONS_TABLE in tables:
        version = int(await conn.fetchval(f"SELECT COALESCE(max(version), 0) FROM {MIGRATIONS_TABLE}"))
    return Found(version, tables)


def check_usable(found: Found, where: str) -> None:
    """Refuse another program's database, an empty one, or a schema other than this code's."""
    if found.empty:
        raise ConfigError(
            f"HITL_DB: the PostgreSQL database {where} holds no hitl store yet; create it with "
            "`hitl db upgrade` (or copy an SQLite store into it with `hitl db migrate --to URL`)"
        )
    check_ours(found, where)
    if found.version > SCHEMA_VERSION:
        raise ConfigError(
            f"HITL_DB: {where} was written by a newer hitl-mcp (schema {found.version}; this one knows "
            f"{SCHEMA_VERSION}): upgrade hitl-mcp"
        )
    if found.version < SCHEMA_VERSION:
        raise ConfigError(
            f"HITL_DB: {where} holds schema {found.version}; this hitl-mcp needs schema {SCHEMA_VERSION}: "
            "run `hitl db upgrade` once (every server on it must be this version or newer)"
        )


def check_ours(found: Found, where: str) -> None:
    if not found.empty and not found.ours:
        tables = ", ".join(sorted(found.tables)[:5])
        raise ConfigError(
            f"HITL_DB: {where} is not a hitl store (a PostgreSQL database with the tables {tables}); name "
            "an empty database, or give the store a schema of its own (?options=-csearch_path%3Dhitl)"
        )


async def upgrade(conn: Conn, where: str) -> tuple[int, int]:
    """Apply every step the database lacks, in one transaction; (version before, version after)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE, UPGRADE_LOCK)
        found = await inspect(conn)  # read under the lock: another upgrade may have just committed
        check_ours(found, where)
        if found.version > SCHEMA_VERSION:
            check_usable(found, where)
        if not found.ours:
            await conn.execute(
                f"CREATE TABLE {MIGRATIONS_TABLE} (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for migration in migrations()[found.version :]:
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
    return found.version, SCHEMA_VERSION
