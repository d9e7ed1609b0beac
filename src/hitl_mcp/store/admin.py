"""What `hitl db` does to a store as a whole: read its schema version, and upgrade it.

The SQLite store upgrades itself when a writing command opens it (one file, one owner: nothing else can
be left behind by the upgrade); `upgrade` does the same on purpose. A PostgreSQL store is shared by servers
that may run different versions during a rollout, so only `upgrade` changes its schema.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from hitl_mcp.config import Settings, StoreLocation, redact
from hitl_mcp.errors import ConfigError
from hitl_mcp.private_files import readable_by_others
from hitl_mcp.store import require_postgres_driver


@dataclass(frozen=True)
class SchemaState:
    """A store's schema version as found (0: no store yet) and the one this hitl-mcp writes."""

    location: StoreLocation
    found: int
    known: int
    ours: bool = True
    exposed: tuple[tuple[Path, int], ...] = ()
    """The store's files (the SQLite file, its -wal and -shm) that its group or others may read, with
    their modes: they hold arguments and email bodies."""

    @property
    def current(self) -> bool:
        return self.found == self.known


async def schema_state(settings: Settings) -> SchemaState:
    location = settings.store
    if location.url is not None:
        require_postgres_driver()
        from hitl_mcp.store import postgres_schema
        from hitl_mcp.store.postgres import PostgresStore
        from hitl_mcp.store.postgres_connection import FAULTS, fault

        conn = await PostgresStore(location.url, readonly=True).connect()
        try:
            found = await postgres_schema.inspect(conn)
        except FAULTS as error:
            raise fault(error, location.url) from None
        finally:
            await conn.close()
        ours = found.ours or found.empty
        return SchemaState(location, found.version, postgres_schema.SCHEMA_VERSION, ours)

    from hitl_mcp.store import sqlite_schema
    from hitl_mcp.store.sqlite import open_reader

    path = settings.db_path
    if not path.is_file():
        return SchemaState(location, 0, sqlite_schema.SCHEMA_VERSION)

    def read() -> sqlite_schema.Found:
        conn = open_reader(path)
        try:
            return sqlite_schema.inspect(conn)
        finally:
            conn.close()

    try:
        held = await anyio.to_thread.run_sync(read)
    except sqlite3.DatabaseError as error:
        raise ConfigError(f"HITL_DB: {path} is not a hitl store ({error})") from None
    files = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
    exposed = tuple((file, mode) for file in files if (mode := readable_by_others(file)) is not None)
    return SchemaState(location, held.version, sqlite_schema.SCHEMA_VERSION, held.ours or held.empty, exposed)


async def upgrade(settings: Settings) -> tuple[int, int]:
    """Create the store, or bring its schema up to this version's; (version before, version after).
    A store newer than this version, or another program's database, is refused and left as it is."""
    before = await schema_state(settings)
    location = settings.store
    if location.url is not None:
        from hitl_mcp.store import postgres_schema
        from hitl_mcp.store.postgres import PostgresStore
        from hitl_mcp.store.postgres_connection import FAULTS, fault

        conn = await PostgresStore(location.url).connect()
        try:
            return await postgres_schema.upgrade(conn, redact(location.url))
        except FAULTS as error:
            raise fault(error, location.url) from None
        finally:
            await conn.close()

    from hitl_mcp.store.sqlite import SQLiteStore

    store = SQLiteStore(settings.db_path, busy_timeout=settings.gate.busy_timeout_seconds)
    await store.open()  # prepares the file: creates or upgrades it in one transaction
    await store.close()
    return before.found, before.known
