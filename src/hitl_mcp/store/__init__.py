"""The storage seam: one small async interface, one implementation per database.

Every method that changes a request is one transaction holding one conditional write and its audit record,
so a transition is either wholly applied or not at all, and two processes can never both win it.
Methods report honestly: a transition that did not apply returns `None` / `False`, never raises — except
`decide`, whose plan (the gate's rules, run inside the transaction) raises the refusal it finds.

`open_store` picks the implementation the settings name: `store/sqlite.py` (one file, the default) or
`store/postgres.py` (a PostgreSQL database that any number of servers share). Nothing outside this package
opens a database of the gate's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import anyio

from hitl_mcp.audit import AuditRecord
from hitl_mcp.errors import ConfigError, Effect
from hitl_mcp.models import AuditEvent, Change, Request, Status
from hitl_mcp.notify.outbox import OutboxStore
from hitl_mcp.policy import Snapshot

if TYPE_CHECKING:
    from hitl_mcp.config import Settings
    from hitl_mcp.store.replay import Filed
    from hitl_mcp.store.report_sql import ReportRows


@dataclass(frozen=True)
class NewRequest:
    request_id: str
    tool: str
    arguments: dict[str, Any]
    arguments_digest: str
    summary: str
    preview: dict[str, Any]
    requested_by: str
    created_at: float
    expires_at: float
    policy: Snapshot
    escalate_at: float | None = None
    target: str | None = None
    """The action's target as JSON text: only a process configured for the same target runs it."""
    idempotency_key: str | None = None
    dedup_since: float | None = None
    """Return a pending request of the same principal and digest filed since then instead; None: never."""
    traceparent: str | None = None
    """The filing call's W3C trace context, kept in the `filed` audit record: the action's span joins that
    trace whichever server runs it (`hitl_mcp.tracing`)."""
    grant: str | None = None
    """The grant covering this call (`policy.grant` names it too): the insert spends one of its uses in its
    own transaction, or raises `GrantUnavailable` and files nothing."""

    @property
    def auto_approved(self) -> bool:
        return self.policy.approval == "none"


@dataclass(frozen=True)
class Edit:
    """An approver's change of arguments, validated and re-previewed before the decision's transaction."""

    based_on_digest: str
    arguments: dict[str, Any]
    arguments_digest: str
    summary: str
    preview: dict[str, Any]
    policy: Snapshot
    changes: dict[str, Change]


@dataclass(frozen=True)
class DecisionPlan:
    """What one decision does to a request, worked out by the gate from the request as it stands."""

    principal: str
    verdict: Literal["approve", "reject"]
    reason: str | None
    roles: tuple[str, ...]
    level: int | None
    status: Status
    waiting_on: int | None
    escalate_at: float | None
    keep_escalation: bool = False
    edit: Edit | None = None
    confirmation: bool = False
    """The requester's own yes or no through their client (`approval = "confirm"`): audited as `confirmed`
    (or `rejected`, marked a confirmation) and never stored as a decision, so it counts toward no level."""


Planner = Callable[[Request], DecisionPlan]


@dataclass(frozen=True)
class ClaimFor:
    """Who claims a request the decision approves, in the decision's own transaction (see `Store.decide`).

    `targets` is as for `Store.claim`: the request is claimed only where it was filed against its tool's
    target."""

    worker: str
    targets: str | None = None


@dataclass(frozen=True)
class Page:
    requests: list[Request]
    next_cursor: str | None


@dataclass(frozen=True)
class SummaryRows:
    """A page of the queue as the JSON form of its `RequestSummary` lines, built straight from the rows."""

    lines: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class Denial:
    """A call the policy refused at filing: an audit record only, under the id it would have had."""

    request_id: str
    tool: str
    requested_by: str
    at: float
    policy: str
    arguments_digest: str | None


@dataclass(frozen=True)
class DenialPage:
    denials: list[Denial]
    next_cursor: str | None


class Store(OutboxStore, Protocol):
    """Requests, their decisions and audit trail, and the notification outbox (`OutboxStore`)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(self, request: NewRequest) -> Request:
        """File a request with its `filed` audit record: pending, or approved when its policy needs none.
        Returns the record as stored, read in the same transaction — or, filing nothing, the request this
        one repeats (the same idempotency key, or the same digest while pending since `dedup_since`)."""

    async def record_event(
        self, event_id: str, event: str, actor: str, details: dict[str, Any], now: float
    ) -> None:
        """Audit an event that leaves no request behind: a call the policy refused at filing (`denied`),
        a call passed through to an upstream at once (`passed`)."""

    async def mark_unknown(self, request_id: str, worker: str, reason: str, now: float) -> Request | None:
        """Record that `worker`, still executing the request, lost its target after handing the action
        over: it stays executing, of unknown outcome (`effect` unknown), never run again by itself."""

    async def decide(
        self, request_id: str, plan: Planner, now: float, claim: ClaimFor | None = None
    ) -> Request:
        """Apply `plan(request as it stands)` in one transaction; the plan raises to refuse.

        With `claim`, a decision that approves the request also claims it there, as `claim` would (the
        same conditions, its own audit record): the approver who completes the approvals runs the action
        without a commit of its own between deciding and claiming. A crash can then leave the request
        pending or executing, never approved and unclaimed by the one who was about to run it."""

    async def escalate_due(self, now: float) -> list[str]:
        """Mark pending requests whose current level waited past its escalation time; returns their ids."""

    async def cancel(self, request_id: str, principal: str, now: float) -> bool:
        """pending → cancelled if `principal` is the requester."""

    async def claim(
        self, request_id: str, worker: str, now: float, targets: str | None = None
    ) -> Request | None:
        """approved → executing if not expired and, with `targets` (a JSON object of tool → target), only
        when the request was filed against its tool's target there; the one caller that gets it runs it."""

    async def retry(self, request_id: str, principal: str, now: float) -> Request | None:
        """failed with no effect → approved again, before expiry; the record then, or None."""

    async def finish(
        self,
        request_id: str,
        status: Status,
        actor: str,
        result: dict[str, Any] | None,
        error: str | None,
        now: float,
        details: dict[str, Any] | None = None,
        *,
        effect: Effect | None = None,
    ) -> Request | None:
        """executing → executed/failed with the outcome; the record as it then stands, or None if the
        request was not executing. `details` go into the audit record beside the error; `effect` says
        whether a failure had one."""

    async def expire_overdue(self, now: float, limit: int = 500) -> list[str]:
        """pending/approved whose expiry passed → expired; returns their ids."""

    async def get(self, request_id: str) -> Request | None: ...

    async def match_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids that start with `prefix`, at most `limit` of them."""

    async def page(
        self, statuses: Sequence[Status] | None, tool: str | None, limit: int, cursor: str | None
    ) -> Page:
        """Requests oldest first, keyset-paginated; `statuses=None` means every status."""

    async def summaries(
        self, statuses: Sequence[Status] | None, tool: str | None, limit: int, cursor: str | None
    ) -> SummaryRows:
        """`page`, each request as its one line (`RequestSummary`'s JSON form) instead of its record."""

    async def count(self, statuses: Sequence[Status] | None, tool: str | None, cursor: str | None) -> int:
        """How many requests `page` has left to list after `cursor` (all of them with None)."""

    async def denials(self, tool: str | None, limit: int, cursor: str | None) -> DenialPage:
        """Calls refused at filing (`denied` audit records), oldest first, keyset-paginated by audit seq."""

    async def count_denials(self, tool: str | None, cursor: str | None) -> int:
        """How many `denials` has left to list after `cursor`."""

    async def approved_unclaimed(
        self, decided_before: float, limit: int = 100, targets: str | None = None
    ) -> list[str]:
        """Approved requests nobody claimed since `decided_before`, those `claim` with `targets` may take."""

    async def audit_trail(self, request_id: str) -> list[AuditEvent]: ...

    async def change_counter(self) -> int:
        """A number that changes whenever any process commits to the store."""

    def audit_records(
        self, *, since: float | None = None, until: float | None = None, request_id: str | None = None
    ) -> AsyncIterator[AuditRecord]:
        """Audit records as stored, in seq order, streamed from one read snapshot (a million of them never
        sit in memory): those of `request_id`, at or after `since`, before `until`."""

    async def audit_head(self) -> tuple[int, str]:
        """The last audit record's seq and hash: (0, GENESIS) for an empty trail."""

    async def filed_page(self, after: int, since: float | None, limit: int) -> list[Filed]:
        """Filed requests after seq `after` (0: from the first), oldest first, filed at or after `since`
        (all when None): what `hitl policy simulate` replays. Reads only."""

    async def report_rows(self, since: float | None = None) -> ReportRows:
        """The report's aggregates (`hitl_mcp.report`) counted by the store's own SQL in one snapshot, over
        the requests filed at or after `since` (all when None)."""

    async def audit_request_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Request ids in the audit trail (denied and passed calls' too) that start with `prefix`."""

    async def changed_since(self, audit_seq: int | None) -> tuple[list[str], int]:
        """Requests with an audit record after `audit_seq` (every change writes one), and the newest seq;
        with None, no requests and the newest seq, to start from."""


def filed_details(request: NewRequest) -> dict[str, Any]:
    """What a `filed` audit record holds beside its event."""
    trace = {"traceparent": request.traceparent} if request.traceparent else {}
    return {"tool": request.tool, "arguments_digest": request.arguments_digest, **trace}


def level_details(index: int | None) -> dict[str, int | None]:
    """How an audit record names a policy level: `level` numbered as every face shows it (from 1), beside
    `level_index` into the policy's levels. Records written before `level_index` existed hold the index
    as `level`; the presence of `level_index` tells them apart, and stored records are never rewritten."""
    return {"level": None if index is None else index + 1, "level_index": index}


def finish_details(
    error: str | None, effect: Effect | None, details: dict[str, Any] | None
) -> dict[str, Any]:
    """What a `finish` audit record holds beside its event: the error, the effect, anything given."""
    return {
        **({"error": error} if error else {}),
        **({"effect": effect} if effect else {}),
        **(details or {}),
    }


# Audit events that leave no request behind to read (a denial keeps no arguments; a passed call and its
# outcome are no request): `changed_since` tells subscribers nothing about them, on either backend.
NO_REQUEST_EVENTS = ("denied", "passed", "pass-outcome")


# How often the change counter is asked while waiting: it bounds how late another process's commit is
# seen, and an ask costs microseconds.
CHANGE_POLL_SECONDS = 0.02


class Counted(Protocol):
    async def change_counter(self) -> int: ...


@runtime_checkable
class Announced(Protocol):
    """A store that hears of every commit as it happens (PostgreSQL's LISTEN): waiters need not poll."""

    async def change_counter(self) -> int: ...

    def next_change(self) -> anyio.Event:
        """Set at the next change of the counter, by any process."""


async def wait_for_change(
    store: Counted,
    before: int,
    timeout: float,
    *,
    local: anyio.Event | None = None,
    poll: float = CHANGE_POLL_SECONDS,
) -> None:
    """Return once the store's change counter is no longer `before` (a commit by any process) or `local`
    is set (a change in this process, seen at once), or when `timeout` passes.

    Take `before` (and `local`) before reading the state you wait to see change: a commit landing between
    that read and this wait then still ends it."""
    with anyio.move_on_after(timeout):
        if isinstance(store, Announced):
            await _wait_announced(store, before, local)
            return
        while await store.change_counter() == before:
            if local is None:
                await anyio.sleep(poll)
                continue
            with anyio.move_on_after(poll):
                await local.wait()
                return


async def _wait_announced(store: Announced, before: int, local: anyio.Event | None) -> None:
    # The event is taken before the counter is compared, so a change between the two still ends the wait.
    while True:
        changed = store.next_change()
        if await store.change_counter() != before or (local is not None and local.is_set()):
            return
        if local is None:
            await changed.wait()
            continue
        async with anyio.create_task_group() as tasks:

            async def first(event: anyio.Event) -> None:
                await event.wait()
                tasks.cancel_scope.cancel()

            tasks.start_soon(first, changed)
            tasks.start_soon(first, local)


async def open_store(settings: Settings, *, readonly: bool = False, any_schema: bool = False) -> Store:
    """The store the settings name, opened: SQLite (a file, the default) or PostgreSQL (`HITL_DB` or
    `[store] url` of `postgresql://…`). `readonly` for commands that only read; `any_schema` (with it) to
    examine a trail whatever schema holds it (`hitl audit`). Close it when done."""
    location = settings.store
    store: Store
    if location.url is not None:
        require_postgres_driver()
        from hitl_mcp.store.postgres import PostgresStore

        store = PostgresStore(
            location.url,
            notify=settings.notifiers,
            readonly=readonly,
            any_schema=any_schema,
            lock_timeout=settings.gate.busy_timeout_seconds,
        )
    else:
        from hitl_mcp.store.sqlite import SQLiteStore

        store = SQLiteStore(
            settings.db_path,
            synchronous=settings.gate.synchronous,
            busy_timeout=settings.gate.busy_timeout_seconds,
            notify=settings.notifiers,
            readonly=readonly,
            any_schema=any_schema,
        )
    await store.open()
    return store


def require_postgres_driver() -> None:
    """Refuse, in one line, a PostgreSQL store without its driver (an optional extra)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        raise ConfigError(
            "HITL_DB: a PostgreSQL store needs its driver, which is not installed: "
            "pip install 'asyncpg>=0.30' into hitl's environment"
        ) from None
