"""Deciding several requests at once from the queue: one reason, then each request decided by its own Gate
call — checked, applied and audited on its own, exactly as if it had been decided from its page — and an
answer per request: what it became, or why it was refused.

Each selection carries the digest of the arguments the queue showed (`pick_value`): a request edited since
is refused, as a decision link's is, rather than approved unread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from hitl_mcp.errors import HitlError, InvalidArguments
from hitl_mcp.gate import MAX_PAGE, Gate
from hitl_mcp.models import Request

PICK = "pick"
# As many as one queue page shows: a selection never reaches past what the person could see.
MAX_PICKED = MAX_PAGE
Verdict = Literal["approve", "reject"]


@dataclass(frozen=True)
class Picked:
    ref: str
    shown: str | None
    """The arguments' digest the queue showed, when the selection carried one."""


@dataclass(frozen=True)
class Result:
    ref: str
    record: Request | None
    """The request after the decision; None when it was refused."""
    refusal: str | None
    summary: str | None
    """What the request is, for the list of refusals (None when there is no such request)."""


def pick_value(request_id: str, digest: str) -> str:
    return f"{request_id}:{digest}"


def picks_of(body: str) -> list[Picked]:
    """Every selected request in a form body, once each, in the order the page listed them."""
    seen: dict[str, Picked] = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        if name != PICK or not value.strip():
            continue
        ref, _, shown = value.strip().partition(":")
        seen.setdefault(ref, Picked(ref, shown or None))
    return list(seen.values())


def verdict_of(text: str | None) -> Verdict:
    if text == "approve":
        return "approve"
    if text == "reject":
        return "reject"
    raise InvalidArguments("verdict: must be approve or reject")


def check(picks: Sequence[Picked], verdict: Verdict, reason: str) -> None:
    """What refuses the whole selection before anything is decided: nothing selected, more than a page,
    or a rejection without its reason (which every one of them would be refused for)."""
    if not picks:
        raise InvalidArguments(f"{PICK}: select at least one request; nothing was changed")
    if len(picks) > MAX_PICKED:
        raise InvalidArguments(f"{PICK}: at most {MAX_PICKED} requests at once; nothing was changed")
    if verdict == "reject" and not reason.strip():
        raise InvalidArguments("reason: a rejection needs a reason; nothing was changed")


async def decide_each(
    gate: Gate,
    principal: str,
    roles: Sequence[str],
    verdict: Verdict,
    picks: Sequence[Picked],
    reason: str,
) -> list[Result]:
    """Each pick decided in turn; a refusal of one (already decided, its own requester, not eligible,
    edited since it was shown) is that one's answer and never stops the others."""
    results = []
    for pick in picks:
        try:
            if verdict == "approve":
                record = await gate.approve(
                    pick.ref, principal, reason.strip() or None, roles=roles, shown=pick.shown
                )
            else:
                record = await gate.reject(pick.ref, principal, reason, roles=roles, shown=pick.shown)
        except HitlError as error:
            results.append(Result(pick.ref, None, str(error), await _summary(gate, pick.ref)))
        else:
            results.append(Result(pick.ref, record, None, record.summary))
    return results


async def _summary(gate: Gate, ref: str) -> str | None:
    try:
        return (await gate.get(ref)).summary
    except HitlError:
        return None
