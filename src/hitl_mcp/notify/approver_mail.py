"""`email_approvers = true`: one message per person who may decide the level a request waits on, each
with their own decision link (`notify.links`).

The recipients are the config's `[principals.NAME]` that have an `email` and whose configured roles the
waiting level admits — the requester and anyone who already decided left out. People known only through
single sign-on have no address here, so they get no message. Recipients are judged when the message is
sent, on the request as it is then; if it no longer waits, or its arguments are no longer those of the
event's snapshot (an edit), nobody is sent a link to decide what the message would not show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol, runtime_checkable

from hitl_mcp import display
from hitl_mcp.actions.send_email import MESSAGE_ID_DOMAIN
from hitl_mcp.config import PrincipalSettings
from hitl_mcp.models import Request, Status
from hitl_mcp.notify import render
from hitl_mcp.notify.links import approvers, link_url, may_decide, mint
from hitl_mcp.store.links import LinkStore


@runtime_checkable
class LinkSource(LinkStore, Protocol):
    """A store that keeps decision links and reads requests: what sending personal links needs."""

    async def get(self, request_id: str) -> Request | None: ...


async def waiting(store: LinkSource, payload: dict[str, Any]) -> Request | None:
    """The request as it is now, if it still waits with the arguments the event's snapshot shows."""
    found = await store.get(payload["request"]["request_id"])
    if found is None or found.status is not Status.PENDING:
        return None
    return found if found.arguments == payload["request"]["arguments"] else None


def recipients(request: Request, principals: Mapping[str, PrincipalSettings]) -> list[tuple[str, str]]:
    """(principal, address) for each person who gets their own message."""
    return [(name, known.email) for name, known in approvers(request, principals) if known.email]


def message(
    payload: dict[str, Any],
    *,
    row_id: int,
    principal: str,
    address: str,
    sender: str,
    link: str,
    public_url: str | None,
) -> EmailMessage:
    request_id = payload["request"]["request_id"]
    built = EmailMessage()
    built["From"] = sender
    built["To"] = address
    built["Subject"] = render.subject(payload)
    built["Date"] = formatdate(usegmt=True)
    # One id per row and recipient: a resend (the at-least-once window) is recognisably the same message.
    built["Message-ID"] = f"<notify-{row_id}.{principal}.{request_id}@{MESSAGE_ID_DOMAIN}>"
    built["X-Hitl-Event"] = payload["event"]
    personal = [
        "",
        f"Your own link, as {display.visible(principal)} (it opens the request; nothing is decided until you",
        "press Approve or Reject there; it works once, and not after the request changes):",
        f"Decide:   {link}",
    ]
    built.set_content(render.text(payload, public_url=public_url) + "\n".join(personal) + "\n")
    return built


async def personal_link(
    store: LinkSource,
    payload: dict[str, Any],
    principal: str,
    roles: Sequence[str],
    *,
    public_url: str,
    now: float,
    lifetime_seconds: float,
) -> str | None:
    """A fresh link page for `principal` to decide the request of `payload`, if it still waits as the
    snapshot shows and they may decide it; None otherwise."""
    if "notice" in payload:
        return None
    request = await waiting(store, payload)
    if request is None or may_decide(request, principal, roles) is not None:
        return None
    token = await mint(store, request, principal, now=now, lifetime_seconds=lifetime_seconds)
    return link_url(public_url, request.request_id, token)
