"""What the API returns and the inbox shows: one function per read, each a Gate call (or a read of the audit
trail, the one `hitl report` and `hitl audit verify` make), returning the API's models. The pages render
exactly these, so an HTML page and its JSON twin cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hitl_mcp import decisions
from hitl_mcp import report as reports
from hitl_mcp.actions import find
from hitl_mcp.config import check_principal, fold_principal
from hitl_mcp.errors import ConfigError, HitlError, InvalidArguments
from hitl_mcp.gate import CURSOR_PATTERN, MAX_PAGE, Gate
from hitl_mcp.models import FINAL_STATUSES, AuditEvent, Request, RequestSummary, Status, SummaryPage
from hitl_mcp.store import Page
from hitl_mcp.store import queue as queue_reads
from hitl_mcp.store.sqlite_rows import snapshot_of
from hitl_mcp.web.models import ChainBreak, ChainState, EditPreview, ReportFigures

FINISHED = tuple(status for status in Status if status in FINAL_STATUSES)
STATUS_CHOICES: dict[str, tuple[Status, ...] | None] = {
    **{status.value: (status,) for status in Status},
    "finished": FINISHED,
    "all": None,
}
DEFAULT_LIMIT = 50
LIMIT = re.compile(r"[0-9]{1,4}")
# A filter the gate does not page by (waiting on me, requester, dates) is applied to the gate's pages in
# turn; this bounds how many one call reads before it answers with what it found and a cursor to go on.
MAX_SCAN_ROUNDS = 20


@dataclass(frozen=True)
class RequestQuery:
    statuses: tuple[Status, ...] | None = (Status.PENDING,)
    tool: str | None = None
    waiting_on_me: bool = False
    requested_by: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    text: str | None = None
    """Words the arguments or the summary hold (`q`), searched by the store."""

    @property
    def filters_beyond_the_gate(self) -> bool:
        return (
            self.waiting_on_me
            or self.requested_by is not None
            or self.since is not None
            or (self.until is not None)
        )


def parse_query(params: Mapping[str, str], *, now: float, default_status: str = "pending") -> RequestQuery:
    """A listing's query parameters, each refused with its name when it is wrong (an empty one too: the
    inbox's forms leave out the fields a person left empty)."""
    statuses = parse_statuses(params.get("status", default_status))
    waiting_on = params.get("waiting_on")
    if waiting_on not in (None, "me"):
        raise InvalidArguments("waiting_on: the only value is `me`")
    limit = params.get("limit", str(DEFAULT_LIMIT))
    if not LIMIT.fullmatch(limit):
        raise InvalidArguments(f"limit: must be between 1 and {MAX_PAGE}")
    requested_by = params.get("requested_by")
    if requested_by is not None:
        try:
            requested_by = check_principal(requested_by, "requested_by")
        except ConfigError as error:
            raise InvalidArguments(str(error)) from None
    text = params.get("q", "").strip() or None
    if text is not None and len(text) > queue_reads.MAX_SEARCH:
        raise InvalidArguments(f"q: at most {queue_reads.MAX_SEARCH} characters")
    if text is not None and any(ord(char) < 32 or ord(char) == 127 for char in text):
        # Arguments are searched as JSON text, which holds these as escapes; PostgreSQL cannot carry a NUL.
        raise InvalidArguments("q: control characters (newlines, tabs, escapes) are not allowed")
    return RequestQuery(
        text=text,
        statuses=statuses,
        tool=params.get("tool"),
        waiting_on_me=waiting_on == "me",
        requested_by=requested_by,
        since=moment(params, "since", now),
        until=moment(params, "until", now),
        limit=int(limit),
        cursor=params.get("cursor"),
    )


def parse_statuses(text: str) -> tuple[Status, ...] | None:
    """`status`: one of `STATUS_CHOICES`, or statuses joined by commas (the CLI's default listing asks for
    pending and executing at once)."""
    if text in STATUS_CHOICES:
        return STATUS_CHOICES[text]
    try:
        return tuple(Status(part) for part in text.split(","))
    except ValueError:
        raise InvalidArguments(f"status: must be one of {', '.join(STATUS_CHOICES)}") from None


def moment(params: Mapping[str, str], name: str, now: float) -> float | None:
    """A time parameter, given as `hitl report --since` takes it: an ISO date or time, or an age (7d)."""
    from hitl_mcp.cli.audit import TIME_HELP, parse_moment

    text = params.get(name)
    if text is None:
        return None
    try:
        return parse_moment(text, now)
    except (ValueError, OverflowError, OSError):
        raise InvalidArguments(f"{name}: give {TIME_HELP}") from None


def awaits(request: Request, principal: str, roles: tuple[str, ...], now: float) -> bool:
    """Whether `principal` may approve `request` now: the decision's own rules, run as a dry run."""
    try:
        decisions.plan(
            request, principal=principal, roles=roles, verdict="approve", reason=None, edit=None, now=now
        )
    except HitlError:
        return False
    return True


async def list_requests(
    gate: Gate, principal: str, query: RequestQuery, now: float, *, roles: tuple[str, ...] = ()
) -> SummaryPage:
    """A page of requests, oldest first; its cursor always points just past the last request read."""
    found, cursor = await list_records(gate, principal, query, now, roles=roles)
    return SummaryPage(requests=[RequestSummary.of(r) for r in found], next_cursor=cursor)


async def read_page(gate: Gate, query: RequestQuery, limit: int, cursor: str | None) -> Page:
    """One page as the store keys it: the gate's listing, or the store's search when there are words."""
    if query.text is None:
        listed = await gate.list(statuses=query.statuses, tool=query.tool, limit=limit, cursor=cursor)
        return Page(listed.requests, listed.next_cursor)
    # The checks `Gate.list` makes of the same parameters, in its words.
    if query.tool is not None:
        find(gate.actions, query.tool)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArguments(f"limit: must be between 1 and {MAX_PAGE}")
    if cursor is not None and not CURSOR_PATTERN.fullmatch(cursor):
        raise InvalidArguments("cursor: not a cursor this server returned")
    return await queue_reads.search(gate.store, query.statuses, query.tool, query.text, limit, cursor)


async def list_records(
    gate: Gate, principal: str, query: RequestQuery, now: float, *, roles: tuple[str, ...] = ()
) -> tuple[list[Request], str | None]:
    """`list_requests`'s records, whole (the queue's selection binds each to the arguments it showed)."""
    if not query.filters_beyond_the_gate:
        page = await read_page(gate, query, query.limit, query.cursor)
        return page.requests, page.next_cursor
    roles = gate.roles_of(principal, roles)

    def wanted(request: Request) -> bool:
        created = request.created_at.timestamp()
        return (
            (query.requested_by is None or fold_principal(request.requested_by) == query.requested_by)
            and (query.since is None or created >= query.since)
            and (query.until is None or created < query.until)
            and (not query.waiting_on_me or awaits(request, principal, roles, now))
        )

    kept: list[Request] = []
    cursor = query.cursor
    for _ in range(MAX_SCAN_ROUNDS):
        # Never more than still fits: the gate's cursor then points past the last request kept or skipped.
        page = await read_page(gate, query, query.limit - len(kept), cursor)
        kept += [request for request in page.requests if wanted(request)]
        cursor = page.next_cursor
        if cursor is None or len(kept) >= query.limit:
            break
    return kept, cursor


@dataclass(frozen=True)
class QueueCounts:
    waiting: int
    """Pending requests not yet expired."""
    on_me: int
    """Those the principal may decide now: eligible for the level each waits on, not its requester, and
    not already counted in it."""


async def queue_counts(gate: Gate, principal: str, now: float, *, roles: tuple[str, ...] = ()) -> QueueCounts:
    """How many wait, and on whom: one grouped count in the store, each rule and level judged once."""
    held = gate.roles_of(principal, roles)
    groups = await queue_reads.waiting_groups(gate.store, principal, now)
    on_me = sum(group.open_to for group in groups if admits(group.policy, group.level, held))
    return QueueCounts(waiting=sum(group.total for group in groups), on_me=on_me)


def admits(policy: str, level: int, roles: tuple[str, ...]) -> bool:
    """Whether `roles` may decide a request under `policy` waiting on `level` (`decisions.plan`'s rule:
    a request waiting on no level is anyone's but its requester's)."""
    if level < 0:
        return True
    levels = snapshot_of(policy).levels
    return level < len(levels) and levels[level].admits(roles)


async def audit_of(gate: Gate, ref: str) -> list[AuditEvent]:
    request = await gate.get(ref)
    return await gate.store.audit_trail(request.request_id)


async def edit_preview(gate: Gate, ref: str, changes: Mapping[str, Any]) -> EditPreview:
    request_id = (await gate.get(ref)).request_id
    edit = await gate.preview_edit(request_id, changes)
    return EditPreview(
        request_id=request_id,
        changes=edit.changes,
        arguments=edit.arguments,
        summary=edit.summary,
        preview=edit.preview,
        policy=edit.policy,
        needs=edit.policy.describe(),
        arguments_digest=edit.based_on_digest,
    )


async def report_of(gate: Gate, since: float | None) -> ReportFigures:
    """`hitl report --json`'s figures, read from the gate's store the way that command reads them."""
    figures = await reports.from_store(gate.store, since)
    return ReportFigures.model_validate(figures.to_json())


async def chain_of(gate: Gate) -> ChainState:
    """`hitl audit verify`'s verdict on the gate's store."""
    from hitl_mcp.store.archive_check import verify_store

    checked = await verify_store(gate.store)
    result = checked.result
    broken = result.broken
    return ChainState(
        ok=result.ok,
        records=result.records,
        head=result.head,
        broken=None
        if broken is None
        else ChainBreak(
            kind=broken.kind,
            seq=broken.seq,
            request_id=broken.request_id,
            event=broken.event,
            message=broken.message,
        ),
    )
