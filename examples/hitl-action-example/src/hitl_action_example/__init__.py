"""`create_ticket`: a gated action from outside hitl-mcp. Approved, it adds one ticket to a JSON file.

The file is the whole ticket system: `{"tickets": [{"number": 1, "title": …, "request_id": …}, …]}`,
rewritten atomically under a lock. Each ticket keeps the id of the request that created it, so running a
request twice never makes two tickets.
"""

from __future__ import annotations

import fcntl  # POSIX; a lock file is what keeps two servers from both writing the next number
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hitl_mcp.actions.base import (
    Action,
    ActionFailed,
    ActionSettings,
    ConfigPath,
    Execution,
    InvalidArguments,
)

Priority = Literal["low", "normal", "high"]


class TicketArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=120, description="One line saying what is wrong.")
    body: str = Field(default="", max_length=4000, description="Details, as plain text.")
    priority: Priority = Field(default="normal", description="low, normal or high.")

    @field_validator("title")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(char < " " or char == "\x7f" for char in value):
            raise ValueError("must be one line without control characters")
        return value.strip()


class TicketSettings(ActionSettings):
    """`[actions.create_ticket]`."""

    tickets: ConfigPath = Field(
        default=Path("tickets.json"),
        validate_default=True,
        description="The ticket file (created when missing); relative to the config file's folder.",
    )
    tail: int = Field(default=3, ge=0, le=20, description="How many of the latest tickets a preview shows.")


class CreateTicket(Action[TicketArguments, TicketSettings]):
    name = "create_ticket"
    description = (
        "Request a new ticket in the team's ticket file. This does NOT create anything by itself: it files a "
        "request that a human must approve, and returns at once with a request id. Only after approval is "
        "the ticket created, exactly once. Arguments: title (one line), body (details), priority (low, "
        "normal or high)."
    )
    arguments_model = TicketArguments
    settings_model = TicketSettings
    # `[policy.create_ticket]` rules may name this beside the arguments, e.g. `when = "open_tickets < 50"`.
    preview_types: ClassVar[Mapping[str, type]] = {"open_tickets": int}

    def target(self) -> dict[str, str]:
        return {"tickets": str(self.settings.tickets.resolve())}

    def summary(self, args: TicketArguments) -> str:
        return f"Create a {args.priority}-priority ticket {args.title!r} in {self.settings.tickets}"

    async def preview(self, args: TicketArguments) -> dict[str, Any]:
        path = self.settings.tickets
        try:
            tickets = await anyio.to_thread.run_sync(read_tickets, path)
        except ValueError as error:
            raise InvalidArguments(f"{error}; nothing was filed") from None
        latest = tickets[-self.settings.tail :] if self.settings.tail else []
        # What is already there, so an approver can see the same problem was reported a minute ago.
        return {
            "file": str(path),
            "open_tickets": len(tickets),
            "would_create": f"T-{next_number(tickets)}",
            "latest": [f"T-{t['number']} [{t['priority']}] {t['title']}" for t in latest],
        }

    async def execute(self, args: TicketArguments, execution: Execution) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(create, self.settings.tickets, args, execution.request_id)


def read_tickets(path: Path) -> list[dict[str, Any]]:
    """The tickets in `path` (none when it does not exist yet); ValueError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the ticket file {path} cannot be read: {error}") from None
    tickets = data.get("tickets") if isinstance(data, dict) else None
    if not isinstance(tickets, list) or not all(
        isinstance(ticket, dict) and isinstance(ticket.get("number"), int) for ticket in tickets
    ):
        raise ValueError(f"the ticket file {path} is not a list of numbered tickets")
    return tickets


def next_number(tickets: list[dict[str, Any]]) -> int:
    return max((ticket["number"] for ticket in tickets), default=0) + 1


def create(path: Path, args: TicketArguments, request_id: str) -> dict[str, Any]:
    """Add the ticket for `request_id`, or return the one it already made."""
    with _locked(path):
        try:
            tickets = read_tickets(path)
        except ValueError as error:
            raise ActionFailed(str(error), effect="none") from None  # nothing was written
        for ticket in tickets:
            if ticket.get("request_id") == request_id:
                return _result(path, ticket, already=True)
        ticket = {
            "number": next_number(tickets),
            "title": args.title,
            "body": args.body,
            "priority": args.priority,
            "request_id": request_id,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            _write_atomically(path, {"tickets": [*tickets, ticket]})
        except OSError as error:
            # The file is replaced in one step at the end, so a failure before it changed nothing.
            raise ActionFailed(f"cannot write {path}: {error}", effect="none") from None
        return _result(path, ticket, already=False)


def _result(path: Path, ticket: Mapping[str, Any], *, already: bool) -> dict[str, Any]:
    return {"ticket": f"T-{ticket['number']}", "file": str(path), "already_created": already}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A separate lock file: the ticket file itself is replaced by each write, so a lock on it would not
    # hold across writers.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (closed below)
    except OSError as error:
        raise ActionFailed(f"cannot lock {path}: {error}", effect="none") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    # Readers (previews) and a crash see either the old file or the new one, never half of it.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = ["CreateTicket", "TicketArguments", "TicketSettings"]
