"""A request's status: the one enum every part of hitl names statuses by.

Its own module, with no pydantic, so a short command (`hitl list`) can name statuses without loading the
models."""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}
)
