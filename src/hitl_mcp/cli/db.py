"""`hitl db status|upgrade|migrate`: where the store is, its schema, and moving it to PostgreSQL."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import counted, load, refusals
from hitl_mcp.config import StoreLocation, load_settings, redact
from hitl_mcp.errors import ConfigError
from hitl_mcp.store import admin, require_postgres_driver


@main.group("db")
def db_group() -> None:
    """The store itself: where it is, its schema version, and moving it.

    The store is an SQLite file (the default: HITL_DB=/path/to/hitl.db) or a PostgreSQL database
    (HITL_DB=postgresql://USER@HOST:PORT/DB, or `[store] url` in the config file), which any number of
    `hitl serve` processes share: each runs the requests it has the target for, housekeeping is done once
    whichever server does it, and every server hears of every change at once (LISTEN/NOTIFY).

    \b
    Several servers on PostgreSQL:
      createdb hitl
      HITL_DB=postgresql://hitl@db.example.com/hitl hitl db upgrade     # creates the schema
      HITL_DB=postgresql://hitl@db.example.com/hitl hitl serve --http --port 8001   # and 8002, 8003…
    Moving an SQLite store there (stop its servers first):
      hitl db migrate --to postgresql://hitl@db.example.com/hitl

    A PostgreSQL store needs its driver: pip install 'asyncpg>=0.30' into hitl's
    environment (from a checkout: pip install -e '.[postgres]').
    """


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@refusals
def status(as_json: bool) -> None:
    """Where the store is, and whether its schema is the one this hitl-mcp writes."""
    state = anyio.run(admin.schema_state, load())
    if as_json:
        found = {
            "kind": state.location.kind,
            "location": state.location.describe(),
            "schema": state.found,
            "known": state.known,
            "current": state.current,
            "readable_by_others": [
                {"file": str(file), "mode": f"{mode:04o}"} for file, mode in state.exposed
            ],
        }
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"store    {state.location.kind} {state.location.describe()}")
    if not state.ours:
        verdict = "not a hitl store"
    elif state.found == 0:
        verdict = "no store yet; `hitl db upgrade` creates it"
    elif state.found < state.known:
        verdict = f"older than this hitl-mcp's {state.known}: `hitl db upgrade`"
    elif state.found > state.known:
        verdict = f"newer than this hitl-mcp's {state.known}: upgrade hitl-mcp"
    else:
        verdict = "current"
    click.echo(f"schema   {state.found}: {verdict}")
    for file, mode in state.exposed:
        click.echo(
            f"warning  {file} is mode {mode:04o}: others on this machine can read the arguments and email "
            f"bodies it holds; chmod 600 {file}"
        )


@db_group.command("upgrade")
@refusals
def upgrade() -> None:
    """Create the store, or bring its schema up to this version's.

    PostgreSQL: each step is one SQL file of the package (store/migrations/postgres/), applied in order in
    one transaction and recorded in hitl_migrations; run it once per release, before or while the servers
    restart on the new version (a server refuses a database whose schema it does not know). SQLite: a
    writing command upgrades its file itself when it opens it; this does so on purpose.
    """
    settings = load()
    before, after = anyio.run(admin.upgrade, settings)
    where = f"{settings.store.kind} {settings.store.describe()}"
    if before == after:
        click.echo(f"{where}: schema {after}, already current")
    elif before == 0:
        click.echo(f"{where}: created, schema {after}")
    else:
        click.echo(f"{where}: upgraded from schema {before} to {after}")


@db_group.command("migrate")
@click.option(
    "--to", "target", required=True, metavar="URL", help="The empty PostgreSQL database: postgresql://…"
)
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The SQLite store to copy (default: the configured one, HITL_DB).",
)
@refusals
def migrate(target: str, source: Path | None) -> None:
    """Copy an SQLite store into an empty PostgreSQL database.

    Requests, decisions, the audit trail (hashes and all: `hitl audit verify` prints the same head on the
    copy) and the notification outbox are copied in one transaction: the copy is whole or absent. Stop the
    servers on the SQLite store first, then point HITL_DB at the URL and start them there. While any
    process has the store open the copy is refused (what it wrote afterwards would be lost); while it
    copies, it holds the store exclusively, so nothing else can open it. A target that holds anything is
    refused. Progress goes to stderr.
    """
    from hitl_mcp.store.transfer import copy_to_postgres

    location = _postgres_target(target)
    settings = load()
    if source is None:
        if settings.store.path is None:
            raise ConfigError(
                "HITL_DB names a PostgreSQL store already; give the SQLite store to copy with --from PATH"
            )
        source = settings.store.path
    require_postgres_driver()
    copied = anyio.run(copy_to_postgres, source.expanduser().resolve(), target, _progress())
    counts = copied.counts
    click.echo(
        f"copied {counted(counts['requests'], 'requests')}, {counted(counts['decisions'], 'decisions')}, "
        f"{counted(counts['audit'], 'audit records')} and {counted(counts['outbox'], 'notifications')} "
        f"from {source} to {location.describe()}"
    )
    same = (
        "the same as the source's" if copied.target_head == copied.source_head else "DIFFERS from the source"
    )
    click.echo(f"audit head {copied.target_head} ({same})")
    click.echo(f"next: HITL_DB={location.describe()} hitl audit verify; then start the servers with it")


def _postgres_target(url: str) -> StoreLocation:
    try:
        location = load_settings({"HITL_DB": url}).store
    except ConfigError as error:
        raise ConfigError(f"--to: {error}".replace("HITL_DB: ", "")) from None
    if location.url is None:
        raise ConfigError(f"--to: {redact(url)} is not a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)")
    return replace(location)


class _progress:
    """Progress on stderr: a line per table, rewritten in place on a terminal, every 5% otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown: dict[str, int] = {}

    def __call__(self, table: str, done: int, total: int) -> None:
        step = max(1, total // 20)
        last = self.shown.get(table)
        if done < total and last is not None and done - last < step:
            return
        self.shown[table] = done
        line = f"copying {table}: {done:,} of {total:,}"
        if self.tty:
            click.echo(f"\r{line}\x1b[K", err=True, nl=done >= total)
        else:
            click.echo(line, err=True)


@db_group.command("backup")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@refusals
def backup_command(path: Path, force: bool) -> None:
    """Copy the SQLite store to PATH while its servers run.

    The copy is consistent (the store as it stood at one moment; servers go on writing meanwhile), mode
    0600, and its audit trail is verified before the head is printed: `HITL_DB=PATH hitl audit verify`
    prints the same. PATH is never overwritten without --force. Progress goes to stderr.

    On PostgreSQL this says how to use pg_dump instead, and what to keep beside the dump.
    """
    from hitl_mcp.store.backup import backup, postgres_advice

    settings = load()
    if settings.store.url is not None:
        raise ConfigError(postgres_advice(settings.store.describe()))
    done = anyio.run(
        lambda: backup(settings.db_path, path.expanduser().absolute(), force=force, progress=_pages())
    )
    chain = done.chain
    if chain.broken is not None:
        click.echo(f"copied {settings.db_path} to {path}, but its audit trail FAILED: {chain.broken.message}")
        sys.exit(1)
    click.echo(f"copied {settings.db_path} to {path} ({done.pages:,} pages, mode 0600)")
    click.echo(f"audit: {chain.records} records, head {chain.head}")


class _pages:
    """Backup progress on stderr: rewritten in place on a terminal, every 10% otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if total < 10 * 1024 or (not self.tty and tenth == self.shown):
            return  # a small store is copied before anyone could read a progress line
        self.shown = tenth
        line = f"backing up: {done:,} of {total:,} pages"
        if self.tty:
            click.echo(f"\r{line}\x1b[K", err=True, nl=done >= total)
        else:
            click.echo(line, err=True)


@db_group.command("archive")
@click.option(
    "--before",
    required=True,
    metavar="DATE",
    help="Move requests finished before this: an ISO date or time (UTC unless it says) or an age (30d).",
)
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The JSONL file to write (mode 0600); an existing one is refused.",
)
@refusals
def archive_command(before: str, target: Path) -> None:
    """Move finished requests older than DATE, with their decisions and audit records, into a file.

    What leaves is always the start of the audit chain, up to the first record of a request still open
    (pending, approved, executing — settle an unknown outcome to let it go) or newer than DATE: the store
    keeps a contiguous rest of the chain and a checkpoint (the last archived record's seq and hash) from
    which `hitl audit verify` continues. `hitl audit verify --archive FILE` checks the file on its own and
    against the store. The file is written and fsynced before anything is deleted; if the command is
    interrupted, run it again with the same --to.
    """
    import time

    from hitl_mcp.cli.audit import parse_moment
    from hitl_mcp.store import open_store
    from hitl_mcp.store.archive import archive

    try:
        moment = parse_moment(before, time.time())
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--before'") from None
    settings = load()
    path = target.expanduser().absolute()

    async def run() -> None:
        store = await open_store(settings)
        try:
            done = await archive(store, moment, path, time.time(), progress=_records())
        finally:
            await store.close()
        chosen, entry = done.plan, done.entry
        if entry is None:
            click.echo(
                f"nothing to archive before {before}" + (f": {chosen.stopped}" if chosen.stopped else "")
            )
            return
        click.echo(
            f"archived {counted(entry.requests, 'requests')}, {counted(done.decisions, 'decisions')} and "
            f"{counted(entry.records, 'audit records')} (seq {entry.from_seq + 1}–{entry.through_seq}) "
            f"to {path}"
        )
        click.echo(
            f"checkpoint seq {entry.through_seq}, hash {entry.through_hash}; file sha256 {entry.sha256}"
        )
        if chosen.stopped:
            click.echo(f"stopped at {chosen.stopped}")

    anyio.run(run)


class _records:
    """Archive progress on stderr, for an archive big enough to take a while."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if total < 20_000:
            return
        line = f"archiving: {done:,} of {total:,} audit records"
        if self.tty:
            click.echo(f"\r{line}\x1b[K", err=True, nl=done >= total)
        else:
            click.echo(line, err=True)
