"""Verifying archives and a store's trail from its checkpoint (`hitl audit verify [--archive FILE]`).

`hitl_mcp.store.archive` says what an archive holds and how it is made; this checks a file on its own (its
header, its records' chain from `from` to `through`, each request's arguments against their digest) and
against what the store (or a later archive's `archived` record) recorded when it was made, its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hitl_mcp.audit import AuditRecord, Checkpoint, VerifyResult, Walk
from hitl_mcp.errors import HitlError
from hitl_mcp.store.archive import EVENT, TRAIL, Entry, Header, backend, header_of

if TYPE_CHECKING:
    from hitl_mcp.store import Store


@dataclass(frozen=True)
class FileCheck:
    """An archive file's verdict on its own: `problem` None when sound."""

    path: Path
    header: Header | None
    sha256: str
    records: int
    requests: int
    decisions: int
    problem: str | None
    archived: tuple[Entry, ...] = ()
    """The `archived` records the file holds: earlier archives' digests, under this file's chain."""


def _lines(path: Path, digest: Any) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            digest.update(line)
            yield number, line


def check_file(path: Path) -> FileCheck:
    """Verify an archive on its own: the header, the chain of its records from `from` to `through`, and
    each request (its arguments against their digest, its records in the file)."""
    from hitl_mcp.gate import arguments_digest

    digest = hashlib.sha256()
    records = requests = decisions = 0
    head: Header | None = None
    ids: set[str] = set()
    archived: list[Entry] = []
    problem: str | None = None
    walk: Walk | None = None
    pending: AuditRecord | None = None

    def step(current: AuditRecord, following: AuditRecord | None) -> str | None:
        assert walk is not None
        broken = walk.step(current, following)
        return None if broken is None or broken.broken is None else broken.broken.message

    try:
        for number, line in _lines(path, digest):
            if problem is not None:
                continue  # keep reading: the digest covers the whole file
            if number == 1:
                head = header_of(line, path)
                walk = Walk(head.start)
                continue
            assert walk is not None and head is not None
            try:
                row = json.loads(line)
                kind = next(iter(row))
                value = row[kind]
            except (ValueError, StopIteration, TypeError):
                problem = f"line {number} is not JSON of an archive row"
                continue
            if kind == "audit":
                try:
                    record = AuditRecord(**value)
                except TypeError:
                    problem = f"line {number} is not an audit record"
                    continue
                if requests or decisions:
                    problem = f"line {number}: an audit record after the requests"
                    continue
                if pending is not None:
                    problem = step(pending, record)
                pending = record
                records += 1
                ids.add(str(record.request_id))
                if record.event == EVENT and record.request_id == TRAIL:
                    entry = _entry_of(record.details)
                    if entry is not None:
                        archived.append(entry)
            elif kind == "request":
                if pending is not None:
                    problem = step(pending, None)
                    pending = None
                requests += 1
                problem = problem or _request_problem(value, ids, number, arguments_digest)
            elif kind == "decision":
                decisions += 1
                if not isinstance(value, dict) or value.get("request_id") not in ids:
                    problem = f"line {number}: a decision about a request the archive does not hold"
            else:
                problem = f"line {number}: an unknown row {kind!r}"
        if problem is None and walk is None:
            problem = "the file is empty"
        if problem is None and pending is not None:
            problem = step(pending, None)
        if problem is None:
            assert walk is not None and head is not None
            end = walk.end()
            problem = _ends_problem(head, end, records, requests)
    except OSError as error:
        problem = f"cannot read it ({error})"
    except HitlError as error:
        problem = str(error)
    return FileCheck(path, head, digest.hexdigest(), records, requests, decisions, problem, tuple(archived))


def _request_problem(value: Any, ids: set[str], number: int, digest_of: Callable[..., str]) -> str | None:
    try:
        rid, tool, digest = value["id"], value["tool"], value["arguments_digest"]
        arguments = json.loads(value["arguments"])
    except (KeyError, TypeError, ValueError):
        return f"line {number} is not a request"
    if rid not in ids:
        return f"line {number}: request {rid} has no audit record in the archive"
    if digest_of(tool, arguments) != digest:
        return f"line {number}: request {rid}'s arguments do not match their digest (changed)"
    return None


def _ends_problem(head: Header, end: VerifyResult, records: int, requests: int) -> str | None:
    if records != head.records or head.through.seq - head.start.seq != records:
        return f"it holds {records} audit records; its header says {head.records}"
    if end.head != head.through.hash:
        return f"its last record's hash is {end.head}, not the {head.through.hash} its header names"
    if requests != head.requests:
        return f"it holds {requests} requests; its header says {head.requests}"
    return None


def _entry_of(details: str) -> Entry | None:
    try:
        return Entry(**json.loads(details))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class StoreCheck:
    """The remaining trail, walked from the store's checkpoint, and the checkpoint's own agreement."""

    result: VerifyResult
    checkpoint: Checkpoint
    problem: str | None = None


async def verify_store(store: Store) -> StoreCheck:
    """Walk the store's trail from its checkpoint. The checkpoint and the records are two reads: an archive
    committing between them is seen and the walk made again."""
    from hitl_mcp.audit import verify_stream

    found = backend(store)
    for _ in range(3):
        checkpoint = await found.checkpoint()
        seen: list[Entry] = []
        result = await verify_stream(_watched(store.audit_records(), seen), checkpoint)
        if await found.checkpoint() == checkpoint:
            break
    problem = None
    if result.ok:
        recorded = {entry.through_seq: entry for entry in await found.entries()}
        problem = _agreement(seen, recorded, checkpoint)
    return StoreCheck(result, checkpoint, problem)


async def _watched(records: AsyncIterator[AuditRecord], seen: list[Entry]) -> AsyncIterator[AuditRecord]:
    """`records` as they are, noting on the way the archives their `archived` records describe."""
    async for record in records:
        if record.event == EVENT and record.request_id == TRAIL:
            entry = _entry_of(record.details)
            if entry is not None:
                seen.append(entry)
        yield record


def _agreement(seen: list[Entry], recorded: dict[int, Entry], checkpoint: Checkpoint) -> str | None:
    """The archives rows must say what the chain's `archived` records say, and the checkpoint must be the
    last of them."""
    for entry in seen:
        row = recorded.get(entry.through_seq)
        if row is None:
            span = f"seq {entry.from_seq + 1}–{entry.through_seq}"
            return f"the archive of {span} is on the trail but its archives row is gone"
        if row != entry:
            return (
                f"the archives row for seq {entry.from_seq + 1}–{entry.through_seq} differs from its "
                "`archived` audit record: it was changed"
            )
    last = max(recorded.values(), key=lambda entry: entry.through_seq, default=None)
    if last is not None and Checkpoint(last.through_seq, last.through_hash) != checkpoint:
        return "the checkpoint is not the last archive's end"
    return None


def against_store(check: FileCheck, recorded: Sequence[Entry], also: Sequence[Entry] = ()) -> str | None:
    """An archive sound on its own must be the one the store (or a later archive's `archived` record)
    recorded for its range, byte for byte."""
    head = check.header
    if head is None:
        return check.problem
    matching = [e for e in (*recorded, *also) if e.through_seq == head.through.seq]
    if not matching:
        return (
            f"the store records no archive of seq {head.start.seq + 1}–{head.through.seq}: the leftover of "
            "an interrupted `hitl db archive` (run it again), or another store's"
        )
    for entry in matching:
        if entry.sha256 != check.sha256:
            return (
                f"its SHA-256 is {check.sha256}, not the {entry.sha256} recorded when it was made: it was "
                "changed"
            )
        if (
            Checkpoint(entry.from_seq, entry.from_hash) != head.start
            or entry.through_hash != head.through.hash
        ):
            return "its range differs from the one recorded when it was made"
    return None
