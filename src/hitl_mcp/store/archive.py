"""Archiving: finished requests, their decisions and audit records move out of the store into a JSONL file,
and the audit chain stays verifiable across the file and the store.

The rule. The chain is global, so what leaves is always a *prefix* of it: the records up to the last seq K
such that every request with a record at or before K is finished before `--before` (executed, rejected,
expired, cancelled, or failed past any retry) and has all its records at or before K, no record up to K is
newer than `--before`, and no notification of one is still owed. The first record of a request still open
(or too recent) stops the prefix, so the remaining trail is a contiguous suffix and a request's records are
never split between a file and the store. A request left open — an unknown outcome nobody settled — holds
back everything filed after it; `hitl db archive` names it.

The checkpoint. The store keeps one `archives` row per run: the range (from_seq, through_seq], the hash of
the last record moved (through_hash) and the SHA-256 of the file. The row of the largest through_seq is the
checkpoint: `hitl audit verify` walks the remaining trail from it (its first record must be through_seq + 1
and link to through_hash). The run also appends an `archived` record to the chain holding the same values, so
the row itself is under the chain's protection. A file verifies on its own (its records chain from its
`from` to its `through`, each request's arguments match their digest) and against the store (its SHA-256
is the one recorded): a byte changed in either is found (`archive_check.py`).

Crash-safety. The file is written under a temporary name, fsynced, renamed into place and its folder
fsynced before the store is touched; then one transaction checks that nothing moved meanwhile, deletes the
rows, writes the checkpoint and the `archived` record. A crash before that commit leaves the store whole and
a file it does not record: running again replaces that file (same range, or more) and nothing is lost or
written twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from anyio import to_thread

from hitl_mcp.audit import Checkpoint
from hitl_mcp.errors import ConfigError, HitlError
from hitl_mcp.models import utc
from hitl_mcp.private_files import PRIVATE

if TYPE_CHECKING:
    from hitl_mcp.store import Store

logger = logging.getLogger(__name__)

FORMAT = 1
# The response header of `/api/v1/audit/records` naming the store's checkpoint ("SEQ HASH"), so that
# `hitl audit verify` through a server walks from where the store's trail begins.
CHECKPOINT_HEADER = "Hitl-Audit-Checkpoint"
EVENT = "archived"
TRAIL = "archive"
FINAL = frozenset({"executed", "rejected", "expired", "cancelled", "failed"})
REQUEST_FIELDS = (
    "seq",
    "id",
    "tool",
    "arguments",
    "arguments_digest",
    "summary",
    "preview",
    "status",
    "requested_by",
    "created_at",
    "expires_at",
    "updated_at",
    "claimed_by",
    "result",
    "error",
    "policy",
    "level",
    "escalate_at",
    "escalated_level",
    "original_arguments",
    "target",
    "effect",
    "idempotency_key",
)
DECISION_FIELDS = ("request_id", "principal", "verdict", "reason", "decided_at", "roles", "level", "edit")
# A test seam, inert unless set: the crash test names this point, and the process stops there (file
# written and fsynced, store untouched) to be killed, as gate.TEST_PAUSE_AT does for execution.
TEST_PAUSE_AT = "HITL_TEST_PAUSE_AT"
PAUSE_POINT = "archive-written"


@dataclass(frozen=True)
class Group:
    """A request as archiving sees it: where its records lie in the chain, and how it stands."""

    request_id: str
    min_seq: int
    max_seq: int
    status: str
    updated_at: float
    expires_at: float
    effect: str | None


@dataclass(frozen=True)
class Inputs:
    """What one read of the store tells the plan."""

    checkpoint: Checkpoint
    head_seq: int
    first_recent: int | None
    """The first record at or after `--before`."""
    first_owed: int | None
    """The first record with a notification still to deliver."""
    groups: list[Group]
    """Requests with a record at or before the last seq that could be archived, by their first record."""


@dataclass(frozen=True)
class Plan:
    start: Checkpoint
    through_seq: int
    requests: int
    stopped: str | None
    """Why the prefix ends where it does (None: the whole trail up to `--before` went)."""

    @property
    def empty(self) -> bool:
        return self.through_seq <= self.start.seq


@dataclass(frozen=True)
class Entry:
    """One archive as the store records it (its `archives` row and `archived` audit record)."""

    from_seq: int
    from_hash: str
    through_seq: int
    through_hash: str
    sha256: str
    file: str
    before: float
    created_at: float
    requests: int
    records: int

    def details(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Archived:
    plan: Plan
    entry: Entry | None
    decisions: int = 0


class ArchiveBackend(Protocol):
    """What archiving needs of a store; `backend(store)` gives the one for its kind."""

    async def inputs(self, before: float) -> Inputs: ...

    async def point(self, seq: int) -> Checkpoint:
        """The record at `seq` as a checkpoint (its seq and hash)."""

    def rows(self, start: Checkpoint, through_seq: int) -> AsyncIterator[dict[str, Any]]:
        """In one read snapshot: the audit records after `start` up to `through_seq` ({"audit": …}), then
        each request they are about ({"request": …}) followed by its decisions ({"decision": …})."""

    async def commit(self, entry: Entry, now: float) -> None:
        """Delete what `entry` moved, record it and its `archived` audit record, in one transaction; raise
        `ArchiveRaced` (writing nothing) when the store changed since the plan was made."""

    async def checkpoint(self) -> Checkpoint: ...

    async def entries(self) -> list[Entry]: ...


class ArchiveRaced(HitlError):
    """The store changed between reading the archive's rows and deleting them: nothing was deleted."""


def backend(store: Store) -> ArchiveBackend:
    from hitl_mcp.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from hitl_mcp.store.sqlite_archive import SQLiteArchive

        return SQLiteArchive(store)
    from hitl_mcp.store.postgres import PostgresStore
    from hitl_mcp.store.postgres_archive import PostgresArchive

    assert isinstance(store, PostgresStore)
    return PostgresArchive(store)


# -- the plan ---------------------------------------------------------------------------------------


def blocker(group: Group, before: float, now: float) -> str | None:
    """Why `group`'s request may not be archived yet; None when it may."""
    rid = group.request_id
    if group.status not in FINAL:
        hint = {
            "executing": " (settle it if its outcome is unknown: `hitl settle`)",
            "pending": " (decide it, or let it expire)",
            "approved": " (it waits to run)",
        }.get(group.status, "")
        return f"request {rid} is {group.status}{hint}"
    if group.updated_at >= before:
        return f"request {rid} finished after --before"
    if group.status == "failed" and group.effect == "none" and group.expires_at > now:
        return f"request {rid} failed and may be retried until {_iso(group.expires_at)}"
    return None


def plan(inputs: Inputs, before: float, now: float) -> Plan:
    """The longest prefix of the remaining trail that may leave (see the module's rule)."""
    start = inputs.checkpoint
    limit, stopped = inputs.head_seq, None
    if inputs.first_recent is not None and inputs.first_recent - 1 < limit:
        limit = inputs.first_recent - 1
        stopped = f"seq {inputs.first_recent} and later are not older than --before"
    if inputs.first_owed is not None and inputs.first_owed - 1 < limit:
        limit = inputs.first_owed - 1
        stopped = f"seq {inputs.first_owed} has a notification not yet delivered"
    best, reach, counted, taken = start.seq, start.seq, 0, 0
    for group in inputs.groups:
        if reach < group.min_seq:
            # Every request so far ends before this one begins: the chain may be cut anywhere between.
            cut = min(group.min_seq - 1, limit)
            if cut >= reach:
                best, taken = cut, counted
        if group.min_seq > limit:
            break
        why = blocker(group, before, now)
        if why is not None:
            return Plan(start, best, taken, f"seq {group.min_seq}: {why}")
        reach = max(reach, group.max_seq)
        counted += 1
    if reach <= limit:
        best, taken = limit, counted
    elif stopped is None:
        stopped = f"seq {limit + 1}: a request's records go on past it"
    return Plan(start, max(best, start.seq), taken, stopped)


# -- writing ----------------------------------------------------------------------------------------


def _iso(at: float) -> str:
    return utc(at).isoformat(timespec="seconds")


def _line(value: dict[str, Any]) -> bytes:
    # ASCII only: the file's bytes (and so its SHA-256) never depend on an encoder, and any text an agent
    # wrote (a lone surrogate included) is written as it was stored.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def header(entry_start: Checkpoint, through: Checkpoint, before: float, now: float, requests: int) -> bytes:
    return _line(
        {
            "hitl_archive": FORMAT,
            "from": {"seq": entry_start.seq, "hash": entry_start.hash},
            "through": {"seq": through.seq, "hash": through.hash},
            "before": _iso(before),
            "before_unix": before,
            "created_at": _iso(now),
            "records": through.seq - entry_start.seq,
            "requests": requests,
        }
    )


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_target(path: Path, store_checkpoint: Checkpoint, recorded: Sequence[Entry]) -> bool:
    """Refuse a `--to` that holds anything but the leftover of an interrupted run over the same range;
    True when such a leftover is there (the run replaces it)."""
    if path.is_dir():
        raise ConfigError(f"--to: {path} is a folder; name the archive's file, e.g. {path / 'archive.jsonl'}")
    if not path.exists():
        if not path.parent.is_dir():
            raise ConfigError(f"--to: no folder {path.parent}")
        return False
    try:
        found: Header | None = read_header(path)
    except HitlError:
        found = None
    digest = file_sha256(path)
    leftover = (
        found is not None
        and found.start == store_checkpoint
        and all(entry.sha256 != digest for entry in recorded)
    )
    if not leftover:
        raise ConfigError(
            f"--to: {path} exists; name a new file (an archive is never overwritten once the store records "
            "it)"
        )
    return True


async def archive(
    store: Store,
    before: float,
    to: Path,
    now: float,
    progress: Callable[[int, int], None] | None = None,
    *,
    leftover_age: float = 0.0,
) -> Archived:
    """Move the finished requests older than `before` (see the module's rule) into the file `to`.

    A leftover of an interrupted run at `to` is replaced once it is `leftover_age` seconds old (younger,
    another run may still be writing it, and this one stops)."""
    found = backend(store)
    inputs = await found.inputs(before)
    chosen = plan(inputs, before, now)
    if chosen.empty:
        return Archived(chosen, None)
    recorded = await found.entries()
    leftover = await to_thread.run_sync(check_target, to, inputs.checkpoint, recorded)
    if leftover and (age := now - os.stat(to).st_mtime) < leftover_age:
        busy = f"{to} was written {age:.0f}s ago by a run not yet recorded"
        return Archived(Plan(chosen.start, chosen.start.seq, 0, busy), None)
    through = await found.point(chosen.through_seq)
    total = through.seq - chosen.start.seq
    out = _Output(to)
    decisions = written = 0
    try:
        await out.write(header(chosen.start, through, before, now, chosen.requests))
        async for row in found.rows(chosen.start, chosen.through_seq):
            await out.write(_line(row))
            if "audit" in row:
                written += 1
                if progress is not None and (written % 5000 == 0 or written == total):
                    progress(written, total)
            elif "decision" in row:
                decisions += 1
        if written != total:
            raise HitlError(
                f"the store gave {written} audit records for seq {chosen.start.seq + 1}–{through.seq}, not "
                f"{total}: run `hitl audit verify`; nothing was archived"
            )
        await to_thread.run_sync(out.place, leftover)
    finally:
        await to_thread.run_sync(out.discard)
    entry = Entry(
        from_seq=chosen.start.seq,
        from_hash=chosen.start.hash,
        through_seq=through.seq,
        through_hash=through.hash,
        sha256=out.digest.hexdigest(),
        file=to.name,
        before=before,
        created_at=now,
        requests=chosen.requests,
        records=total,
    )
    _test_pause(str(to))
    await found.commit(entry, now)
    return Archived(chosen, entry, decisions)


class _Output:
    """The archive's file while it is written: a private temporary file beside `to`, written from a worker
    thread a megabyte at a time (a server's event loop never waits on the disk), then fsynced and linked
    into place."""

    def __init__(self, to: Path) -> None:
        self.to = to
        self.temporary = to.with_name(f".{to.name}.{secrets.token_hex(4)}.partial")
        self.fd: int | None = None
        self.digest = hashlib.sha256()
        self.buffer = bytearray()

    async def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.buffer += data
        if len(self.buffer) >= 1 << 20:
            await to_thread.run_sync(self._flush)

    def _flush(self) -> None:
        if self.fd is None:
            self.fd = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
            os.fchmod(self.fd, PRIVATE)  # exact whatever the umask
        view = memoryview(self.buffer)
        while view:
            view = view[os.write(self.fd, view) :]
        self.buffer = bytearray()

    def place(self, leftover: bool) -> None:
        self._flush()
        assert self.fd is not None
        os.fsync(self.fd)
        if leftover:
            self.to.unlink(missing_ok=True)
        try:
            # Never over a file that appeared meanwhile: another run's, which its store may record.
            os.link(self.temporary, self.to)
        except FileExistsError:
            raise ArchiveRaced(
                f"{self.to} was written by another run meanwhile; nothing was archived"
            ) from None
        _fsync_folder(self.to.parent)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.temporary.unlink(missing_ok=True)


def _test_pause(what: str) -> None:
    if os.environ.get(TEST_PAUSE_AT) != PAUSE_POINT:
        return
    import sys
    import time

    sys.stderr.write(f"hitl-test-pause: {PAUSE_POINT} {what} {os.getpid()}\n")
    sys.stderr.flush()
    time.sleep(60)
    os._exit(70)


DAY = 86_400.0
# A daily run's file that the store does not record, younger than this, may be another server's run still
# writing; older, it is what a crash left, and is replaced.
LEFTOVER_SECONDS = 3600.0


class DailyArchive:
    """`[store] archive_after_days`: housekeeping archives once a day into `[store] archive_dir`, the
    files named by where their range starts. Several servers on one store may all try: the store's
    checkpoint lets one commit, and a file is never written over another."""

    def __init__(self, store: Store, after_days: float | None, folder: Path | None) -> None:
        self.store = store
        self.after_days = after_days
        self.folder = folder
        self.due = 0.0

    async def run_if_due(self, now: float) -> Archived | None:
        if self.after_days is None or self.folder is None or now < self.due:
            return None
        self.due = now + DAY
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            start = await backend(self.store).checkpoint()
            done = await archive(
                self.store,
                now - self.after_days * DAY,
                self.folder / file_name(start),
                now,
                leftover_age=LEFTOVER_SECONDS,
            )
        except ArchiveRaced as raced:
            logger.info("the daily archive was left to another run: %s", raced)
            return None
        except (HitlError, OSError) as error:
            self.due = now + LEFTOVER_SECONDS  # try again within the hour, not tomorrow
            logger.warning("the daily archive failed: %s", error)
            return None
        if done.entry is not None:
            entry = done.entry
            logger.info(
                "archived %d requests (audit seq %d-%d) to %s",
                entry.requests,
                entry.from_seq + 1,
                entry.through_seq,
                self.folder / entry.file,
            )
        return done


def file_name(start: Checkpoint) -> str:
    """The daily run's file for the range after `start`: an interrupted run's leftover has the same name,
    and names sort in chain order."""
    return f"hitl-archive-{start.seq + 1:012d}.jsonl"


# -- reading and verifying --------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    start: Checkpoint
    through: Checkpoint
    before: float
    records: int
    requests: int


def read_header(path: Path) -> Header:
    with path.open("rb") as file:
        first = file.readline()
    return header_of(first, path)


def header_of(line: bytes, path: Path) -> Header:
    try:
        found = json.loads(line)
        if found.get("hitl_archive") != FORMAT:
            raise ValueError("not a hitl archive")
        return Header(
            Checkpoint(int(found["from"]["seq"]), str(found["from"]["hash"])),
            Checkpoint(int(found["through"]["seq"]), str(found["through"]["hash"])),
            float(found["before_unix"]),
            int(found["records"]),
            int(found["requests"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise HitlError(f"{path}: line 1 is not a hitl archive's header") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
