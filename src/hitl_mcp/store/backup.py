"""`hitl db backup PATH`: an online, consistent copy of an SQLite store while its servers run.

SQLite's backup API copies the file a few megabytes per step. The source connection holds one read
snapshot across all the steps: in WAL mode a reader never blocks a writer, so the servers go on committing
throughout, and the copy is the store exactly as it stood at the snapshot (without the held snapshot, a
commit by another process would restart the copy from its first page, and a busy store would never be
copied). The price is that the WAL cannot be checkpointed past the snapshot until the copy ends.

The copy is written under a temporary name, mode 0600 whatever the umask, fsynced, and only then given its
name: a crash leaves no half-copy under PATH. It is a single file in rollback-journal mode (no -wal beside it
to lose when it is moved); a server that opens it switches it back to WAL. Its audit trail is verified
before the command reports the head, which `HITL_DB=PATH hitl audit verify` prints again.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from hitl_mcp.audit import VerifyResult, verify
from hitl_mcp.errors import ConfigError, HitlError
from hitl_mcp.private_files import PRIVATE
from hitl_mcp.store import sqlite_schema
from hitl_mcp.store.sqlite import open_reader
from hitl_mcp.store.sqlite_archive import checkpoint_of

# Pages copied per step: 4 MB of 4 KB pages, a few milliseconds of work between progress reports.
STEP_PAGES = 1024

Progress = Callable[[int, int], None]
"""Told (pages copied, pages in all) after each step."""


@dataclass(frozen=True)
class BackedUp:
    path: Path
    pages: int
    chain: VerifyResult


def postgres_advice(where: str) -> str:
    """What to do instead on PostgreSQL: the database's own tool, and what to keep."""
    return (
        f"the store is the PostgreSQL database {where}: back it up with pg_dump, e.g. "
        '`pg_dump --format=custom --file hitl-$(date +%F).dump "$HITL_DB"` (a consistent snapshot while '
        "servers run; restore with pg_restore into an empty database). Keep the dump, the config file "
        "(HITL_CONFIG), the archive files `hitl db archive` wrote, and the audit head `hitl audit verify` "
        "prints, somewhere the database's owner cannot rewrite"
    )


async def backup(
    source: Path, target: Path, *, force: bool = False, progress: Progress | None = None
) -> BackedUp:
    return await anyio.to_thread.run_sync(_backup, source, target, force, progress)


def _backup(source: Path, target: Path, force: bool, progress: Progress | None) -> BackedUp:
    if not source.is_file():
        raise ConfigError(f"HITL_DB: no store at {source}; HITL_DB names the store file `hitl serve` uses")
    if target.is_dir():
        raise ConfigError(f"PATH: {target} is a folder; name the copy's file, e.g. {target / 'hitl.db'}")
    if target.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"PATH: {target} is the store itself; name another file")
    if target.exists() and not force:
        raise ConfigError(f"PATH: {target} exists; name a new file, or pass --force to replace it")
    if not target.parent.is_dir():
        raise ConfigError(f"PATH: no folder {target.parent}")
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    src = open_reader(source)
    try:
        # Any hitl store, of any schema this version knows: a copy before an upgrade is a good idea.
        found = sqlite_schema.inspect(src)
        sqlite_schema.check_usable(found, source)
        if found.empty:
            raise ConfigError(f"HITL_DB: {source} holds no store yet; nothing to back up")
        src.execute("BEGIN")  # the snapshot every step copies from (see the module's docstring)
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
        try:
            os.fchmod(fd, PRIVATE)  # a umask can only take bits away; this makes the mode exact
        finally:
            os.close(fd)
        pages = _copy(src, temporary, progress)
    except sqlite3.Error as error:
        temporary.unlink(missing_ok=True)
        raise HitlError(f"the backup of {source} failed ({error}); nothing was written to {target}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    try:
        if force:
            os.replace(temporary, target)
        else:
            # A link fails if the name was taken meanwhile: never overwrite without --force.
            os.link(temporary, target)
            temporary.unlink()
    except FileExistsError:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"PATH: {target} exists; name a new file, or pass --force to replace it") from None
    _fsync_folder(target.parent)
    return BackedUp(target, pages, _verified(target))


def _copy(src: sqlite3.Connection, temporary: Path, progress: Progress | None) -> int:
    copied = [0]

    def step(status: int, remaining: int, total: int) -> None:
        copied[0] = total
        if progress is not None:
            progress(total - remaining, total)

    dst = sqlite3.connect(temporary, isolation_level=None)
    try:
        src.backup(dst, pages=STEP_PAGES, progress=step)
        # One self-contained file: nothing beside it to lose when it is moved or copied.
        dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        dst.close()
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return copied[0]


def _verified(path: Path) -> VerifyResult:
    conn = open_reader(path)
    try:
        conn.execute("BEGIN")
        return verify(conn, checkpoint_of(conn))
    finally:
        conn.close()


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
