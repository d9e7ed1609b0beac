"""`hitl audit verify|export` and `hitl report`: read the audit trail, never write it.

These commands open the store read-only and bypass the gate: opening a gate would create a missing store,
and a reader must not be able to alter what it is checking. The store streams the trail from one read
snapshot (SQLite's WAL, PostgreSQL's repeatable read), so they can run beside live servers.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click

from hitl_mcp import display
from hitl_mcp import report as reports
from hitl_mcp.audit import AuditRecord, VerifyResult, verify_stream
from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import counted, load, refusals, table, through_server, with_server
from hitl_mcp.errors import AmbiguousId, ConfigError, NotFound
from hitl_mcp.models import utc
from hitl_mcp.store import Store, open_store

if TYPE_CHECKING:
    from hitl_mcp.cli.remote import RemoteGate

T = TypeVar("T")

AGE = re.compile(r"^(\d{1,9})([smhdw])$", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Request ids are hex; refusing anything else also keeps GLOB's wildcards out of the prefix.
REQUEST_PREFIX = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
EXPORT_FIELDS = ("seq", "request_id", "event", "actor", "at", "at_unix", "details", "prev_hash", "hash")
TIME_HELP = (
    "an ISO date or time (2026-11-01, 2026-11-01T10:00; UTC unless it gives an offset) "
    "or an age (30m, 12h, 7d)"
)


def parse_moment(text: str, now: float) -> float:
    """A point in time as a Unix timestamp: an ISO date/time, or an age such as 7d counted back from now."""
    text = text.strip()
    age = AGE.match(text)
    if age:
        return now - int(age[1]) * UNIT_SECONDS[age[2].lower()]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give {TIME_HELP}") from None
    # The trail and every other command show UTC, so a time without an offset is read as UTC too.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    # A callback rather than a click.ParamType subclass: ParamType is generic only in recent click.
    if value is None:
        return None
    try:
        return parse_moment(value, time.time())
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def reading(work: Callable[[Store], Awaitable[T]]) -> T:
    """`work` on the configured store, opened read-only whatever schema it holds (evidence is read as it
    is); a missing store is a refusal, never created."""
    settings = load()
    path = settings.store.path
    if path is not None and not path.is_file():
        raise ConfigError(f"no store at {path}; HITL_DB names the store file (the one `hitl serve` uses)")

    async def run() -> T:
        store = await open_store(settings, readonly=True, any_schema=True)
        try:
            return await work(store)
        finally:
            await store.close()

    return anyio.run(run)


@main.group()
def audit() -> None:
    """The audit trail: every step of every request, hash-chained so that tampering shows."""


@audit.command("verify")
@click.option(
    "--archive",
    "archives",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Also verify this file `hitl db archive` wrote, on its own and against the store (repeatable: "
    "give every archive to check the whole history).",
)
@refusals
def verify_command(archives: tuple[Path, ...]) -> None:
    """Check that no audit record was changed, removed or inserted.

    Prints "OK: N records, head HASH" and exits 0, or prints one line naming the first bad record and
    exits 1. A store that was archived is walked from its checkpoint (the last archived record); each
    --archive FILE is checked on its own (its chain, its requests' arguments) and against the store (the
    SHA-256 recorded when it was made), and archives given together must continue one another. The chain
    cannot show records cut off its end: write the head hash down somewhere the store's owner cannot
    rewrite, and check later that `hitl audit export` still shows it at that seq.
    """
    if through_server():
        if archives:
            raise ConfigError("--archive: not through a server (HITL_SERVER): unset it to read the store")
        # The records as the server's store holds them, checked here: the same walk, the same verdict.
        _report_chain(with_server(_verify_remote))
        return
    lines, failed = reading(lambda store: _verify_all(store, archives))
    for line in lines:
        click.echo(line)
    if failed:
        sys.exit(1)


async def _verify_remote(server: RemoteGate) -> VerifyResult:
    records = server.audit_records()
    first = await anext(records, None)  # the response's headers name the checkpoint to walk from

    async def walked() -> AsyncIterator[AuditRecord]:
        if first is not None:
            yield first
            async for record in records:
                yield record

    return await verify_stream(walked(), server.audit_checkpoint)


def _report_chain(result: VerifyResult) -> None:
    if result.broken is not None:
        # The message quotes what it found in the store, which whoever changed it chose.
        message = display.visible(result.broken.message)
        click.echo(f"FAILED: {message} ({result.records} records before it are sound)")
        sys.exit(1)
    click.echo(f"OK: {result.records} records, head {result.head}")


async def _verify_all(store: Store, paths: tuple[Path, ...]) -> tuple[list[str], bool]:
    from hitl_mcp.store import archive_check as archive
    from hitl_mcp.store.archive import backend

    lines: list[str] = []
    failed = False
    checks = [await anyio.to_thread.run_sync(archive.check_file, path) for path in paths]
    checks.sort(key=lambda check: check.header.start.seq if check.header else -1)
    recorded = await backend(store).entries()
    later = [entry for check in checks for entry in check.archived]
    previous = None
    for check in checks:
        name = display.visible(str(check.path))
        problem = check.problem or archive.against_store(check, recorded, later)
        head = check.header
        if problem is None and previous is not None and head is not None and previous.through != head.start:
            problem = f"it does not continue the archive before it (which ends at seq {previous.through.seq})"
        if problem is not None:
            failed = True
            lines.append(f"FAILED: archive {name}: {display.visible(problem)}")
        else:
            assert head is not None
            lines.append(
                f"OK: archive {name}: seq {head.start.seq + 1}–{head.through.seq}, "
                f"{counted(check.requests, 'requests')}, {counted(check.decisions, 'decisions')}, "
                "as recorded when it was made"
            )
        previous = head
    found = await archive.verify_store(store)
    result, checkpoint = found.result, found.checkpoint
    after = "" if checkpoint.seq == 0 else f" after the archive checkpoint (seq {checkpoint.seq})"
    if result.broken is not None:
        failed = True
        message = display.visible(result.broken.message)
        lines.append(f"FAILED: {message} ({result.records} records before it are sound)")
    elif found.problem is not None:
        failed = True
        lines.append(f"FAILED: {found.problem}")
    else:
        lines.append(f"OK: {result.records} records{after}, head {result.head}")
    return lines, failed


def _request_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not REQUEST_PREFIX.match(value):
        raise click.BadParameter(f"{value!r} is not a request id or the start of one")
    return value


@audit.command("export")
@click.option("--since", metavar="T", callback=_moment, help=f"Only records at or after T: {TIME_HELP}.")
@click.option("--until", metavar="T", callback=_moment, help="Only records before T, given the same way.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="One JSON object per line, or CSV with a header row.",
)
@click.option(
    "--request",
    "request_prefix",
    metavar="ID",
    callback=_request_option,
    help="Only the records of this request (ID may be any unique prefix).",
)
@refusals
def export(since: float | None, until: float | None, fmt: str, request_prefix: str | None) -> None:
    """Write audit records to stdout, oldest first, with their hashes.

    Each record has seq, request_id, event, actor, at (ISO-8601, UTC), at_unix (the exact timestamp the
    hash covers), details (JSON), prev_hash and hash, so the chain can be re-checked from the export.
    """
    if since is not None and until is not None and since >= until:
        raise click.BadParameter("must be later than --since", param_hint="'--until'")

    async def write(store: Store) -> None:
        request_id = None if request_prefix is None else await _request_id(store, request_prefix)
        records = store.audit_records(since=since, until=until, request_id=request_id)
        await _to_stdout(_write_csv(records) if fmt == "csv" else _write_jsonl(records))

    async def write_from(server: RemoteGate) -> None:
        records = server.audit_records(since=since, until=until, request=request_prefix)
        await _to_stdout(_write_csv(records) if fmt == "csv" else _write_jsonl(records))

    if through_server():
        with_server(write_from)
    else:
        reading(write)


async def _request_id(store: Store, prefix: str) -> str:
    found = await store.audit_request_ids(prefix, limit=2)
    if not found:
        raise NotFound(f"--request: no audit records for a request id starting {prefix!r}")
    if len(found) > 1:
        raise AmbiguousId(f"--request: {prefix!r} starts more than one request id; give more of it")
    return str(found[0])


def _iso(at: Any) -> str:
    try:
        return utc(at).isoformat(timespec="microseconds")
    except (TypeError, ValueError, OverflowError, OSError):  # a tampered value: show it as it is
        return str(at)


async def _write_jsonl(records: AsyncIterator[AuditRecord]) -> None:
    write = sys.stdout.write
    async for record in records:
        try:
            details: Any = json.loads(record.details)
        except (TypeError, ValueError):  # exported as stored, for whoever investigates the damage
            details = record.details
        line = {
            "seq": record.seq,
            "request_id": record.request_id,
            "event": record.event,
            "actor": record.actor,
            "at": _iso(record.at),
            "at_unix": record.at,
            "details": details,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
        }
        write(json.dumps(line, ensure_ascii=False) + "\n")


async def _write_csv(records: AsyncIterator[AuditRecord]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    async for r in records:
        writer.writerow(
            (r.seq, r.request_id, r.event, r.actor, _iso(r.at), repr(r.at), r.details, r.prev_hash, r.hash)
        )


async def _to_stdout(write: Awaitable[None]) -> None:
    try:
        await write
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (`| head`) has what it wanted; point stdout at nothing so the interpreter's final
        # flush does not complain, and stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


@main.command("report")
@click.option(
    "--since", metavar="T", callback=_moment, help=f"Only requests filed at or after T: {TIME_HELP}."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@refusals
def report_command(since: float | None, as_json: bool) -> None:
    """How requests fared: outcomes per tool, approval rate, time to decision, who decided what.

    Counted from the audit trail over the requests filed since T (all of them by default), following
    each to its latest state. The approval rate is approved / (approved + rejected) by people; requests
    the policy approved by itself are counted apart. Time to decision runs from filing to the first
    approve or reject.
    """
    if through_server():
        # The same tally over the same records, read through the server: the same figures to the digit.
        figures = with_server(lambda server: reports.build_stream(server.audit_records(), since))
    else:
        figures = reading(lambda store: reports.from_store(store, since))
    if as_json:
        click.echo(json.dumps(figures.to_json(), indent=2))
    else:
        click.echo(render(figures))


def render(figures: reports.Report) -> str:
    window = f"filed since {utc(figures.since).isoformat(timespec='seconds')}" if figures.since else ""
    if not figures.requests:
        return f"No requests {window}." if window else "No requests in the audit trail yet."
    plural = "request" if figures.requests == 1 else "requests"
    lines = [f"{figures.requests} {plural} {window or 'in the audit trail'}", ""]

    outcomes = list(figures.outcomes)
    rows = [
        (tool, str(sum(counts.values())), *(str(counts.get(name, 0)) for name in outcomes))
        for tool, counts in figures.tools.items()
    ]
    if len(rows) > 1:
        rows.append(("all", str(figures.requests), *(str(n) for n in figures.outcomes.values())))
    lines += [table(("TOOL", "REQUESTS", *(name.upper() for name in outcomes)), rows), ""]

    rate = figures.approval_rate
    timed = figures.decisions_timed
    summary = [
        (
            "Approval rate",
            "-"
            if rate is None
            else f"{rate:.0%} ({figures.approved} approved of {figures.decided} decided by people)",
        ),
        (
            "Time to decision",
            "-"
            if not timed
            else f"p50 {_seconds(figures.decision_seconds_p50)}, p95 {_seconds(figures.decision_seconds_p95)}"
            f" over {timed} request{'s' if timed != 1 else ''}",
        ),
        ("Auto-approved", str(figures.auto_approved)),
        ("Expired", str(figures.expired)),
        ("Escalated", str(figures.escalated)),
        ("Grants", "{made} made, {used} used, {revoked} revoked".format(**figures.grants)),
    ]
    width = max(len(label) for label, _ in summary)
    lines += [*(f"{label.ljust(width)}  {value}" for label, value in summary), ""]

    if figures.approvers:
        approvers = [(name, str(c["approved"]), str(c["rejected"])) for name, c in figures.approvers.items()]
        lines += [table(("APPROVER", "APPROVED", "REJECTED"), approvers), ""]
    events = ", ".join(f"{event} {count}" for event, count in figures.events.items())
    lines.append("Events: " + display.visible(events))
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("d", 86_400.0), ("h", 3600.0), ("m", 60.0)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.1f}s"
