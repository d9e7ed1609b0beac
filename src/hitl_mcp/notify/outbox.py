"""The outbox as the worker and `hitl notify` see it: rows, their states, and the store methods they use.

A row is `pending` until it is `delivered`, or `dead` after too many failed attempts (or one refusal that
no retry can change). A worker *claims* due pending rows: one conditional UPDATE sets a fresh claim token,
a lease and `attempts + 1`, so two workers — in one process or several — never hold the same row. The
worker then marks the row with that token: delivered (in the one transaction that records the success),
or failed with its next attempt time, or dead. A mark whose token no longer matches (the lease ran out
and another worker took the row) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

OutboxState = Literal["pending", "delivered", "dead"]
OUTBOX_STATES: tuple[OutboxState, ...] = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class ClaimedDelivery:
    """A row this worker holds until `lease_until`; `attempts` counts this attempt."""

    row_id: int
    claim: str
    request_id: str
    event: str
    channel: str
    notifier: str
    label: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class Delivery:
    """A row as `hitl notify status` lists it."""

    row_id: int
    request_id: str
    event: str
    channel: str
    label: str
    state: OutboxState
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class OutboxSummary:
    counts: dict[OutboxState, int]
    dead: list[Delivery]
    failing: list[Delivery]
    """Pending rows whose last attempt failed: they will be tried again."""


@runtime_checkable
class OutboxStore(Protocol):
    """What the worker and the CLI need of the outbox; part of every `Store` (SQLite's and PostgreSQL's)."""

    async def change_counter(self) -> int:
        """A number that changes whenever any process commits to the store (as in `Store`)."""

    async def outbox_next_due(self) -> float | None:
        """When the earliest pending row may be claimed (its next attempt, or its lease's end)."""

    async def outbox_claim(
        self, worker: str, now: float, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]: ...

    async def outbox_delivered(self, row_id: int, claim: str, now: float) -> bool: ...

    async def outbox_failed(
        self, row_id: int, claim: str, error: str, now: float, retry_at: float | None
    ) -> bool:
        """Record a failed attempt: pending again from `retry_at`, or dead when `retry_at` is None."""

    async def outbox_release(self, row_id: int, claim: str) -> bool:
        """Give a claimed row back unsent-or-unknown (shutdown mid-send): claimable again at once."""

    async def outbox_summary(self, limit: int) -> OutboxSummary: ...

    async def outbox_prune(self, delivered_before: float) -> int:
        """Forget rows delivered before `delivered_before`; returns how many."""

    async def outbox_retry(self, row_ids: list[int] | None, now: float) -> list[int]:
        """Dead rows (these, or all when None) → pending with a fresh count of attempts."""
