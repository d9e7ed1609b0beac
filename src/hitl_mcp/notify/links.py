"""Single-use decision links: minted for one recipient of one message, checked when opened and spent
when its form is sent.

A link's token is 256 random bits; the store keeps only its SHA-256, bound to the request, the recipient
and the arguments' digest the message showed. The token is minted when a message is *sent* (by the
outbox's worker), never kept in the outbox: a plaintext token at rest would be a credential anyone who
reads the store could use. A retried delivery therefore mints a fresh link; one from an attempt that never
arrived expires unused, and a person holding two links still decides once (the Gate counts a principal
once, and a decided request takes no other decision).

A link lives `link_hours` (a notifier setting) or until its request expires, whichever is sooner. It stops
working when it is used, when its request is decided or edited (the digest changes), or when its recipient
can no longer decide the level the request waits on; the page says which, and decides nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from hitl_mcp.config import PrincipalSettings, fold_principal
from hitl_mcp.errors import NotAllowed
from hitl_mcp.models import Request, Status
from hitl_mcp.policy import check_eligible
from hitl_mcp.store.links import LinkStore, LinkToken

TOKEN_BYTES = 32
PATH = "/r"


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def link_url(public_url: str, request_id: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{PATH}/{quote(request_id, safe='')}/{token}"


def may_decide(request: Request, principal: str, roles: Sequence[str]) -> str | None:
    """Why `principal` cannot decide `request` now, or None when they can (the Gate judges again)."""
    if request.status is not Status.PENDING:
        return f"request {request.request_id} is {request.status.value}, not waiting for a decision"
    me = fold_principal(principal)
    if fold_principal(request.requested_by) == me:
        return f"{principal} filed this request; nobody decides their own request"
    if any(fold_principal(decision.principal) == me for decision in request.decisions):
        return f"{principal} has already decided this request"
    waiting_on = request.approval.waiting_on
    if waiting_on is not None:
        try:
            check_eligible(request.approval.policy, waiting_on, principal, roles, request.request_id)
        except NotAllowed as refusal:
            return str(refusal)
    return None


def approvers(
    request: Request, principals: Mapping[str, PrincipalSettings]
) -> list[tuple[str, PrincipalSettings]]:
    """The principals known to the config, with an email address, who may decide the level `request`
    waits on now (by their configured roles), the requester and those who already decided excluded."""
    return [
        (name, known)
        for name, known in sorted(principals.items())
        if known.email is not None and may_decide(request, name, known.roles) is None
    ]


async def mint(
    store: LinkStore, request: Request, principal: str, *, now: float, lifetime_seconds: float
) -> str:
    """A fresh link token for `principal` to decide `request` as it stands (its digest); only its hash
    is stored."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = min(request.expires_at.timestamp(), now + lifetime_seconds)
    await store.link_insert(
        LinkToken(digest_of(token), request.request_id, principal, request.arguments_digest, now, expires_at)
    )
    return token


def _at(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def judge(
    link: LinkToken | None,
    request_id: str,
    request: Request | None,
    roles: Sequence[str],
    now: float,
) -> str | None:
    """Why this link decides nothing now, in a sentence for the person holding it; None when it may."""
    if link is None:
        return "This link is not one this server sent (mistyped, cut short, or from elsewhere)."
    if link.request_id != request_id:
        return "This link belongs to another request than the one in its address."
    if link.used_at is not None:
        return f"This link was already used, at {_at(link.used_at)}. Each link decides once."
    if request is None:
        return "The request this link was sent for is no longer in the store."
    if request.status is not Status.PENDING:
        return (
            f"The request was {request.status.value} since this link was sent; the link no longer decides "
            "anything."
        )
    if link.expires_at <= now:
        return f"This link expired at {_at(link.expires_at)}."
    if request.arguments_digest != link.arguments_digest:
        return (
            "The request's arguments were edited since this link was sent; what you would approve is not "
            "what the message showed. Open the request in the inbox to read it again."
        )
    why = may_decide(request, link.principal, roles)
    if why is not None:
        return f"{why[0].upper()}{why[1:]}."
    return None
