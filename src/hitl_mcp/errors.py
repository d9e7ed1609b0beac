"""The exception hierarchy.

A `HitlError` is a refusal written for the person or agent who caused it: faces show its message as is
(an MCP `ToolError`, a CLI exit status with one line). Any other exception is a bug and is reported as one.
"""

from __future__ import annotations

from typing import Any, Literal


class HitlError(Exception):
    """A refusal the caller should read."""

    exit_code = 1


class NotFound(HitlError):
    """No request has this id (or prefix)."""

    exit_code = 3


class AmbiguousId(HitlError):
    """An id prefix matches more than one request."""

    exit_code = 3


class NotPending(HitlError):
    """The request is not in a state that allows this transition."""

    exit_code = 4


class Expired(HitlError):
    """The request's time to be decided has passed."""

    exit_code = 4


class NotAllowed(HitlError):
    """The principal may not do this (its own request, or not the requester)."""

    exit_code = 5


class InvalidArguments(HitlError):
    """Arguments fail validation; the message names the field and the rule. Nothing was written."""

    exit_code = 2


class ConfigError(HitlError):
    """The configuration is wrong; the message names the key."""

    exit_code = 2


Effect = Literal["none", "unknown"]


class ActionFailed(HitlError):
    """The real action refused or failed (insufficient cash, SMTP refusal, row count changed).

    `effect` says whether the failure certainly left the world as it was (`"none"`: the request may be
    retried) or may have changed it (`"unknown"`, the default: never run again by itself)."""

    exit_code = 6

    def __init__(
        self, message: str, *, effect: Effect = "unknown", result: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.effect: Effect = effect
        self.result = result
        """What the target answered, when it answered with a failure (an upstream's error content)."""


class OutcomeUnknown(HitlError):
    """The action was handed to its target, which was then lost before it answered: whether it took effect
    is unknown. The request stays executing, shown as outcome unknown, for a person to settle."""

    exit_code = 6


class StoreUnavailable(HitlError):
    """The store cannot do this now: locked by another process, disk full, read-only, unreadable.

    `certain` says that nothing was written; the gate then adds what did not happen ("nothing was
    filed")."""

    exit_code = 7

    def __init__(self, reason: str, *, certain: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.certain = certain

    def nothing(self, what: str) -> StoreUnavailable:
        """The same fault, saying what did not happen because of it."""
        if not self.certain:
            return self
        return StoreUnavailable(f"{self.reason}; {what}", certain=True)
