"""The audit trail's hash chain: how a record is hashed and appended, and how a whole trail is checked.

Every record carries `prev_hash`, the hash of the record before it (`GENESIS` for the first), and `hash`,
a SHA-256 over a canonical encoding of (prev_hash, seq, request_id, event, actor, at, details). A record
that is changed, removed or slipped in between two others therefore breaks the chain where it stands, and
`verify` names the first such record in plain words.

A chain cannot show that records were cut off its end, nor stop someone who rewrites every record after
the one they changed: that is what the head hash `verify` reports is for. Write it down somewhere the
store's owner cannot rewrite (a ticket, a log shipper, a signed message) and compare it later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import sqlite3

GENESIS = "0" * 64
COLUMNS = "seq, request_id, event, actor, at, details, prev_hash, hash"
# When a record's hash fails, try whether it matches the same record under a nearby seq: that tells a
# renumbering (records removed or inserted, later ones shifted to hide the gap) from an edit. The search
# runs once, at the failure, so a generous bound costs nothing on a sound trail.
RENUMBER_SEARCH = 1000

BreakKind = Literal["changed", "removed", "inserted", "out-of-order", "unhashed"]


@dataclass(frozen=True)
class AuditRecord:
    """One row of the `audit` table as stored: `details` is the stored JSON text."""

    seq: int
    request_id: str
    event: str
    actor: str
    at: float
    details: str
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> AuditRecord:
        """A row selected with `COLUMNS`. Values are kept as stored, whatever a tamperer made of them."""
        seq, request_id, event, actor, at, details, prev_hash, hash_ = row
        return cls(seq, request_id, event, actor, at, details, prev_hash, hash_)

    def label(self) -> str:
        return f"seq {self.seq} (request {self.request_id}, {self.event} by {self.actor})"

    def row(self) -> tuple[int, str, str, str, float, str, str, str]:
        """The values in `COLUMNS` order, to insert."""
        return (
            self.seq,
            self.request_id,
            self.event,
            self.actor,
            self.at,
            self.details,
            self.prev_hash,
            self.hash,
        )


def canonical(
    prev_hash: str, seq: int, request_id: str, event: str, actor: str, at: float, details: str
) -> bytes:
    """The bytes a record's hash covers.

    `details` is hashed as the JSON value it holds, not as its text, so another store that keeps it as
    a JSON type (PostgreSQL's jsonb reorders keys) computes the same hash. `at` goes through `float`
    because SQLite's REAL column hands back a float even for an int written to it, and JSON writes floats
    with `repr`, which round-trips exactly. ASCII-only output makes the bytes independent of any encoder.
    """
    return json.dumps(
        {
            "actor": actor,
            "at": float(at),
            "details": json.loads(details),
            "event": event,
            "prev_hash": prev_hash,
            "request_id": request_id,
            "seq": int(seq),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


def record_hash(
    prev_hash: str, seq: int, request_id: str, event: str, actor: str, at: float, details: str
) -> str:
    return hashlib.sha256(canonical(prev_hash, seq, request_id, event, actor, at, details)).hexdigest()


def link(
    head_seq: int, head_hash: str | None, request_id: str, event: str, actor: str, at: float, details: str
) -> AuditRecord:
    """The record that extends a trail whose last record is `head_seq` with `head_hash` (0 and None for an
    empty trail). Whoever calls this must hold the trail's head until the record is committed (each store
    says how), or two writers would chain onto the same head."""
    seq, prev_hash = head_seq + 1, head_hash if head_hash is not None else GENESIS
    digest = record_hash(prev_hash, seq, request_id, event, actor, at, details)
    return AuditRecord(seq, request_id, event, actor, at, details, prev_hash, digest)


def read_records(
    conn: sqlite3.Connection, where: str = "", params: Iterable[Any] = ()
) -> Iterator[AuditRecord]:
    """The records of an open SQLite store connection in seq order (what scripts and tests hold); the
    store's own `audit_records` is the way to read any store."""
    from hitl_mcp.store import sqlite_audit

    return sqlite_audit.read_records(conn, where, params)


@dataclass(frozen=True)
class Checkpoint:
    """Where a trail in a store begins: the last record archived out of it (`hitl db archive`), whose
    seq and hash the store keeps; the store's first record must be the next seq, linking to that hash."""

    seq: int
    hash: str

    def describe(self) -> str:
        return "the start of the trail" if self.seq == 0 else f"the archive checkpoint (seq {self.seq})"


START = Checkpoint(0, GENESIS)


@dataclass(frozen=True)
class Break:
    """The first record where the chain does not hold.

    `seq` is the record's number; for a removed record it is the first missing number, and
    `request_id`/`event` are then unknown (the message names the record found in its place).
    """

    kind: BreakKind
    seq: int
    request_id: str | None
    event: str | None
    message: str


@dataclass(frozen=True)
class VerifyResult:
    """`records` sound records were walked; `head` is the last one's hash (`GENESIS` for none)."""

    records: int
    head: str
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(source: sqlite3.Connection | Iterable[AuditRecord], start: Checkpoint = START) -> VerifyResult:
    """Walk the trail in seq order and name the first record that was changed, removed or inserted.

    Pass records in seq order (a store's `audit_records` streams them: see `verify_stream`), or an open
    SQLite store connection. `start` is where the trail begins: the store's archive checkpoint, if any.
    """
    records = read_records(source) if hasattr(source, "execute") else iter(source)  # type: ignore[arg-type]
    walk = Walk(start)
    current = next(records, None)
    while current is not None:
        # One record of look-ahead: a forged record is recognised by its successor linking past it.
        following = next(records, None)
        found = walk.step(current, following)
        if found is not None:
            return found
        current = following
    return walk.end()


async def verify_stream(records: AsyncIterable[AuditRecord], start: Checkpoint = START) -> VerifyResult:
    """`verify` over records streamed from a store, never holding more than two of them."""
    stream = aiter(records)
    walk = Walk(start)
    current = await anext(stream, None)
    while current is not None:
        following = await anext(stream, None)
        found = walk.step(current, following)
        if found is not None:
            return found
        current = following
    return walk.end()


class Walk:
    """What a walk along the chain remembers: the last sound record and how many were sound."""

    def __init__(self, start: Checkpoint) -> None:
        self.start = start
        self.previous: AuditRecord | None = None
        self.sound = 0

    def step(self, current: AuditRecord, following: AuditRecord | None) -> VerifyResult | None:
        """The verdict when `current` breaks the chain; None to walk on."""
        previous = self.previous
        broken = _check(previous, current, following, self.start)
        if broken is None:
            self.sound += 1
            self.previous = current
            return None
        sound = self.sound
        # A record found to have been inserted may be the one before `current`, already counted.
        if previous is not None and broken.seq == previous.seq:
            sound -= 1
        return VerifyResult(sound, _head_before(previous, broken, self.start), broken)

    def end(self) -> VerifyResult:
        return VerifyResult(self.sound, self.previous.hash if self.previous else self.start.hash)


def _head_before(previous: AuditRecord | None, broken: Break, start: Checkpoint) -> str:
    if previous is None:
        return start.hash
    return previous.prev_hash if broken.seq == previous.seq else previous.hash


def _check(
    previous: AuditRecord | None, current: AuditRecord, following: AuditRecord | None, start: Checkpoint
) -> Break | None:
    expected_seq = previous.seq + 1 if previous else start.seq + 1
    expected_link = previous.hash if previous else start.hash
    after = f"seq {previous.seq}" if previous else start.describe()

    if not isinstance(current.seq, int) or current.seq < expected_seq:
        return Break(
            "out-of-order",
            current.seq,
            current.request_id,
            current.event,
            f"{current.label()} is out of order: it comes after {after}",
        )
    if current.seq > expected_seq:
        return _removed(expected_seq, current.seq - 1, f"{current.label()} follows {after}")

    linked = current.prev_hash == expected_link
    intact = _intact(current, current.seq)
    if linked and intact:
        return None

    if following is not None and following.prev_hash == expected_link:
        return Break(
            "inserted",
            current.seq,
            current.request_id,
            current.event,
            f"{current.label()} was inserted: seq {following.seq} links to {after} and skips it",
        )
    if previous is not None and not linked and current.prev_hash == previous.prev_hash:
        # `previous` looked sound because its forger computed its hashes, but the record after it still
        # links to the record before it.
        before = f"seq {previous.seq - 1}" if previous.seq - 1 > start.seq else start.describe()
        return Break(
            "inserted",
            previous.seq,
            previous.request_id,
            previous.event,
            f"{previous.label()} was inserted: {current.label()} links to {before} and skips it",
        )
    if current.hash == "":
        return Break(
            "unhashed",
            current.seq,
            current.request_id,
            current.event,
            f"{current.label()} has no hash: it was written before the trail was chained, or its hash was "
            "erased",
        )
    if not intact:
        original = _original_seq(current)
        if original is not None and original > current.seq and not linked:
            pronoun = "it" if original - current.seq == 1 else "them"
            return _removed(
                current.seq,
                original - 1,
                f"the records after {pronoun} were renumbered to hide the gap ({current.label()} was seq "
                f"{original})",
            )
        if original is not None:
            return Break(
                "changed",
                current.seq,
                current.request_id,
                current.event,
                f"{current.label()} was renumbered: it was written as seq {original}",
            )
        unlinked = "" if linked else f", and it does not link to {after}"
        return Break(
            "changed",
            current.seq,
            current.request_id,
            current.event,
            f"{current.label()} was changed: its contents do not match its hash{unlinked}",
        )
    # `current` is intact where it stands but links to something other than `previous`: either
    # `previous` was rewritten with a freshly computed hash, or records between them were removed and
    # `current` rehashed under its new number while keeping its old link. The first is the plain case.
    if previous is None:
        return Break(
            "changed",
            current.seq,
            current.request_id,
            current.event,
            f"{current.label()} does not link to {start.describe()}: it was rewritten, or records "
            "before it were removed" + ("" if start.seq == 0 else ", or the checkpoint was changed"),
        )
    return Break(
        "changed",
        previous.seq,
        previous.request_id,
        previous.event,
        f"{previous.label()} was changed and its hash recomputed: seq {current.seq} still links to its "
        "old hash",
    )


def _removed(first: int, last: int, witness: str) -> Break:
    gone = f"seq {first}" if first == last else f"seq {first}–{last}"
    return Break("removed", first, None, None, f"{gone} removed: {witness}")


def _intact(record: AuditRecord, seq: int) -> bool:
    try:
        return record.hash == record_hash(
            record.prev_hash, seq, record.request_id, record.event, record.actor, record.at, record.details
        )
    except (TypeError, ValueError):  # a tamperer stored something that is not JSON, or not a number
        return False


def _original_seq(record: AuditRecord) -> int | None:
    for distance in range(1, RENUMBER_SEARCH + 1):
        for seq in (record.seq + distance, record.seq - distance):
            if seq > 0 and _intact(record, seq):
                return seq
    return None
